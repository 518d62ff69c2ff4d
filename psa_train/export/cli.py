"""`psa-train export`: a training checkpoint -> a Hub-ready folder (and optionally the Hub).

    psa-train export --config recipes/wan_distill.yaml \\
        --ckpt_path runs/wan_distill/checkpoints/last.ckpt --output exports/wan-psa \\
        [--push-to-hub user/wan-psa] [--private] [--lora-only]
"""

from __future__ import annotations

import argparse
import sys

from .consolidate import CheckpointError
from .folder import ExportError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="psa-train export",
        description="Export a psa-train checkpoint (Lightning file or DeepSpeed ZeRO-2/3 folder) as a "
        "diffusers (DistillationModule) or transformers (VideoClassifier) folder with psa_config.json and a model "
        "card; optionally push it to the Hugging Face Hub.",
    )
    p.add_argument("--config", help="the recipe the run was trained with (its model section; the "
                   "checkpoint's saved hyperparameters take precedence)")
    p.add_argument("--ckpt_path", "--ckpt-path", dest="ckpt_path", required=True,
                   help="checkpoint file (e.g. last.ckpt) or DeepSpeed checkpoint folder")
    p.add_argument("--output", required=True, help="folder to write (must be empty or new, see --overwrite)")
    p.add_argument("--push-to-hub", "--push_to_hub", dest="push_to_hub", metavar="REPO_ID",
                   help="also upload the folder to this Hub model repo (created if needed); token from "
                   "HF_TOKEN or `hf auth login`")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--lora-only", "--lora_only", dest="lora_only", action="store_true",
                   help="write the LoRA adapter alone (diffusers/peft format) instead of merged weights")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="cast the exported weights (default: as trained; norms/rope stay float32)")
    p.add_argument("--max-shard-size", "--max_shard_size", dest="max_shard_size", default="5GB",
                   help="safetensors shard size of full exports (default 5GB)")
    p.add_argument("--logs", default=None,
                   help="folder with the run's logs for the model card (default: found from the recipe/checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .run import export_checkpoint

    def log(msg: str) -> None:
        print(msg, flush=True)

    try:
        result = export_checkpoint(
            args.ckpt_path,
            args.output,
            config=args.config,
            lora_only=args.lora_only,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            logs=args.logs,
            overwrite=args.overwrite,
            repo_id=args.push_to_hub,
            log=log,
        )
    except (ExportError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log(f"exported {result.weights} weights to {result.output}: " + ", ".join(result.files))
    if result.log_files:
        log(f"model card: run summary from {len(result.log_files)} log file(s)")
    if args.push_to_hub:
        from .hub import HubPushError, push_to_hub

        try:
            url = push_to_hub(result.output, args.push_to_hub, private=args.private)
        except HubPushError as err:
            print(f"error: {err}", file=sys.stderr)
            print(f"the export is kept at {result.output}", file=sys.stderr)
            return 1
        log(f"pushed to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
