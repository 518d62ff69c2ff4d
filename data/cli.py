"""`psa-train data ...`: the data tools (`precompute`, `make-demo`).

    psa-train data precompute --config recipes/tiny.yaml --input 'videos/train-{000000..000003}.tar' --output latents/
    psa-train data precompute --model-id Wan-AI/Wan2.1-T2V-1.3B-Diffusers --input ... --output ...
    psa-train data make-demo --output data/demo
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from .manifest import CacheMismatchError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="psa-train data", description="Data tools: latent precompute, demo dataset.")
    sub = parser.add_subparsers(dest="tool", metavar="{precompute,make-demo}")

    pre = sub.add_parser(
        "precompute",
        help="encode video shards into latent shards (Wan VAE + UMT5)",
        description="Encode WebDataset video shards into latent shards. Finished output shards are skipped on a "
        "re-run; a cache made with other settings is refused unless --overwrite is given. Settings come from "
        "the flags, else from the recipe's data.init_args.precompute, else model defaults.",
    )
    pre.add_argument("--config", help="Lightning YAML recipe; model id read from data.init_args.model_id "
                     "(or model.init_args.model_id), settings from data.init_args.precompute")
    pre.add_argument("--model-id", help="diffusers model id or local path, or 'tiny'; overrides the recipe")
    pre.add_argument("--input", action="append", required=True,
                     help="video shards: path, brace pattern, '::' list or pipe: URL (repeatable)")
    pre.add_argument("--output", required=True, help="directory for latent shards and manifest.json")
    pre.add_argument("--num-frames", type=int, help="frames per clip (4k+1)")
    pre.add_argument("--height", type=int, help="clip height (multiple of 8)")
    pre.add_argument("--width", type=int, help="clip width (multiple of 8)")
    pre.add_argument("--fps", type=float, help="resample clips to this frame rate")
    pre.add_argument("--frame-stride", type=int, help="take every n-th frame (when no fps)")
    pre.add_argument("--text-max-length", type=int, help="caption tokens (padded/truncated)")
    pre.add_argument("--latent-dtype", choices=["float32", "bfloat16", "float16"], help="stored latents dtype")
    pre.add_argument("--vae-dtype", choices=["float32", "bfloat16", "float16"], help="VAE compute dtype")
    pre.add_argument("--text-dtype", choices=["float32", "bfloat16", "float16"], help="text encoder dtype")
    pre.add_argument("--batch-size", type=int, default=4, help="clips encoded at once")
    pre.add_argument("--num-workers", type=int, default=2, help="decoding workers")
    pre.add_argument("--device", help="default: cuda when available, else cpu")
    pre.add_argument("--overwrite", action="store_true", help="replace a cache made with other settings")
    pre.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser(
        "make-demo",
        help="render the demo dataset (videos + tiny latents)",
        description="Render short clips of moving shapes with captions as WebDataset shards, then their latent "
        "shards with the tiny untrained demo VAE/text encoder. Deterministic for a seed.",
    )
    demo.add_argument("--output", required=True, help="directory (must be empty unless --overwrite)")
    demo.add_argument("--num-clips", type=int, default=256)
    demo.add_argument("--num-val", type=int, default=32, help="clips in the validation shard")
    demo.add_argument("--train-shards", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-latents", action="store_true", help="videos only")
    demo.add_argument("--threads", type=int, default=1, help="torch CPU threads for encoding (0: torch default)")
    demo.add_argument("--overwrite", action="store_true")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def _precompute(args: argparse.Namespace) -> int:
    from .precompute import PrecomputeSettings, precompute_latents, settings_from_recipe

    recipe_model, recipe_settings = settings_from_recipe(args.config) if args.config else (None, {})
    model_id = args.model_id or recipe_model
    if model_id is None:
        where = f"the recipe {args.config} (data.init_args.model_id)" if args.config else "the command line"
        raise SystemExit(f"psa-train data precompute: no model id in {where}; pass --model-id")
    flags = {
        k: getattr(args, k)
        for k in ("num_frames", "height", "width", "fps", "frame_stride", "text_max_length",
                  "latent_dtype", "vae_dtype", "text_dtype")
    }  # fmt: skip
    overrides = {**recipe_settings, **{k: v for k, v in flags.items() if v is not None}}
    if flags["frame_stride"] is not None and flags["fps"] is None:
        overrides["fps"] = None
    settings = PrecomputeSettings.for_model(model_id, **overrides)
    start = time.perf_counter()
    manifest = precompute_latents(
        args.input,
        args.output,
        settings,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    n = sum(s["samples"] for s in manifest["shards"].values())
    skipped = sum(s["skipped"] for s in manifest["shards"].values())
    print(f"{n} clips in {len(manifest['shards'])} shards under {args.output} "
          f"({skipped} skipped, {time.perf_counter() - start:.1f}s)")  # fmt: skip
    return 0


def _make_demo(args: argparse.Namespace) -> int:
    from .demo import make_demo

    start = time.perf_counter()
    manifest = make_demo(
        args.output,
        num_clips=args.num_clips,
        num_val=args.num_val,
        train_shards=args.train_shards,
        seed=args.seed,
        latents=not args.no_latents,
        threads=args.threads or None,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"demo data in {args.output}: {manifest['num_train']} train + {manifest['num_val']} val clips "
          f"({time.perf_counter() - start:.1f}s)")  # fmt: skip
    return 0


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.tool is None:
        parser.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _precompute(args) if args.tool == "precompute" else _make_demo(args)
    except (CacheMismatchError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"psa-train data {args.tool}: error: {err}", file=sys.stderr)
        return 2
