"""One training step of VideoMAE-B (ViT-B/16, 16x224^2, tubelet 2): dense SDPA vs PSA at density ~0.25.

Random weights in bf16 (`VideoMAEForVideoClassification`, 400 classes), batch 8 of 16 frames at
224x224 -> an 8 x 14 x 14 grid = 1568 tokens, 12 layers of 12 heads x 64. A step is forward +
backward of cross-entropy to random labels (all weights trainable, no optimizer). Prints the
median step time after warm-up, the peak memory (torch.cuda.max_memory_allocated) and the
measured PSA density of each variant as a table, plus the ratio to the dense cuDNN step.

    PYTHONPATH=. python3 benchmarks/videomae_step_bench.py                    # on an H200
    PYTHONPATH=. python3 benchmarks/videomae_step_bench.py --variants dense-cudnn psa --steps 5
    PYTHONPATH=. python3 benchmarks/videomae_step_bench.py --arch tiny --device cpu   # CPU smoke test

Variants: "dense-cudnn" / "dense-flash" (SDPA pinned to that backend), "psa" (quota bands
15 % full, 10 % 2x, 10 % 4x, 15 % 8x, 50 % skipped: nominal density 0.244; --bands to change),
"psa-forced" (every block at --forced-level; 4 gives exactly 0.25 with no selection cost).
--compile default / reduce-overhead runs every variant through torch.compile (the latter replays
each step's launches from CUDA graphs, which is what short sequences need: the PSA layer's own
kernels are custom operators there, kernels/compiled_ops.py). --anneal START gives "psa" a new budget
before every step, as the annealing callback does; "graphs compiled" counts dynamo's graphs.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from step_timing import median_time, sdpa_context

VARIANTS = ("dense-cudnn", "dense-flash", "psa", "psa-forced")
DEFAULT_BANDS = {1: 0.15, 2: 0.10, 4: 0.10, 8: 0.15}
ARCHS = {
    # VideoMAE-B: MCG-NJU/videomae-base's architecture
    "videomae-b": dict(image_size=224, patch_size=16, num_frames=16, tubelet_size=2, hidden_size=768,
                       num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # CPU smoke test: 8 frames of 32x32, patch 4 -> 4 x 8 x 8 = 256 tokens, 2 heads of 64
    "tiny": dict(image_size=32, patch_size=4, num_frames=8, tubelet_size=2, hidden_size=128,
                 num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
}


def _psa_config(args):
    from psa_train.attention import PSAConfig

    bands = json.loads(args.bands) if args.bands else DEFAULT_BANDS
    return PSAConfig(block_m=args.block_m, block_n=args.block_n, band_mode="quota", bands=bands,
                     layout=args.layout, tile_size=tuple(args.tile), budget=1.0)


def build_model(args, device: torch.device, dtype: torch.dtype):
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    torch.manual_seed(0)
    arch = dict(ARCHS[args.arch])
    config = VideoMAEConfig(**arch, num_labels=400, attn_implementation="sdpa")
    model = VideoMAEForVideoClassification(config).to(device=device, dtype=dtype).train()
    g = torch.Generator(device="cpu").manual_seed(1)
    shape = (args.batch, arch["num_frames"], 3, arch["image_size"], arch["image_size"])
    pixels = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    labels = torch.randint(0, 400, (args.batch,), generator=g).to(device)
    grid = (arch["num_frames"] // arch["tubelet_size"], arch["image_size"] // arch["patch_size"],
            arch["image_size"] // arch["patch_size"])
    return model, pixels, labels, grid


def bench(args, model, pixels, labels, grid, variant: str, device: torch.device) -> dict:
    from psa_train.models.vit import disable_psa_vit, enable_psa_vit, psa_density

    disable_psa_vit(model)
    if variant.startswith("psa"):
        processors = enable_psa_vit(model, _psa_config(args))
        if variant == "psa-forced":
            for p in processors:
                p.psa.force_level = args.forced_level

    run = model
    if args.compile != "none":
        torch._dynamo.reset()
        run = torch.compile(model, mode=None if args.compile == "default" else args.compile)

    budgets = iter(_anneal_schedule(args)) if args.anneal is not None and variant == "psa" else None

    def step():
        model.zero_grad(set_to_none=True)
        if budgets is not None:
            budget = next(budgets)
            for p in processors:
                p.psa.budget = budget
        if args.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with sdpa_context(variant, device):
            logits = run(pixel_values=pixels).logits
            torch.nn.functional.cross_entropy(logits.float(), labels).backward()

    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    seconds, peak = median_time(step, args.steps, args.warmup, device)
    density = psa_density(model) if variant.startswith("psa") else 1.0
    disable_psa_vit(model)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    return {"variant": variant, "ms": seconds * 1e3, "peak_gib": peak, "density": density, "graphs": graphs}


def _anneal_schedule(args) -> list[float]:
    """--anneal START: a new budget before every step, rising linearly from START to 1 over the run."""
    steps = args.warmup + args.steps
    return [args.anneal + (1.0 - args.anneal) * i / max(1, steps - 1) for i in range(steps)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="videomae-b")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batch", type=int, default=None, help="default: 8 (videomae-b), 2 (tiny)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                   help="default: all on CUDA; dense-cudnn psa psa-forced on CPU (SDPA's default there)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (median); default 10 / 2 on CPU")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first; default 3 / 1 on CPU")
    p.add_argument("--block-m", type=int, default=128)
    p.add_argument("--block-n", type=int, default=64)
    p.add_argument("--layout", default="tile", choices=("tile", "gilbert", "none"))
    p.add_argument("--tile", type=int, nargs=3, default=(2, 8, 8))
    p.add_argument("--bands", default=None, help='quota bands as JSON, e.g. \'{"1": 0.25}\'')
    p.add_argument("--forced-level", type=int, default=4, choices=(1, 2, 4, 8))
    p.add_argument("--compile", default="none", choices=("none", "default", "reduce-overhead"),
                   help="torch.compile the model for every variant (reduce-overhead: CUDA graphs)")
    p.add_argument("--anneal", type=float, default=None, metavar="START",
                   help="psa: a new budget before every step, from START to 1, as the annealing callback "
                        "sets them (a START near 1 keeps the density, so the time shows the cost of the change)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cpu = device.type == "cpu"
    dtype = getattr(torch, args.dtype or ("float32" if cpu else "bfloat16"))
    args.batch = args.batch or (8 if args.arch == "videomae-b" else 2)
    args.steps = args.steps or (2 if cpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if cpu else 3)
    variants = args.variants or (["dense-cudnn", "psa", "psa-forced"] if cpu else list(VARIANTS))
    if args.arch == "tiny" and args.block_m == 128 and args.tile == (2, 8, 8):
        args.block_m, args.block_n, args.tile = 64, 32, (2, 4, 4)

    model, pixels, labels, grid = build_model(args, device, dtype)
    tokens = grid[0] * grid[1] * grid[2]
    heads = model.config.num_attention_heads
    print(f"# VideoMAE {args.arch}: batch {args.batch}, grid {grid} = {tokens} tokens, {heads} heads x "
          f"{model.config.hidden_size // heads}, {model.config.num_hidden_layers} layers, {dtype}, {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"# PSA: block {args.block_m}x{args.block_n}, layout {args.layout} {tuple(args.tile)}, bands "
          f"{args.bands or DEFAULT_BANDS}; psa-forced level {args.forced_level}; fwd+bwd, median of "
          f"{args.steps} after {args.warmup} warm-up; torch.compile: {args.compile}\n")
    rows = []
    for variant in variants:
        try:
            rows.append(bench(args, model, pixels, labels, grid, variant, device))
        except Exception as err:  # a backend missing on this device: report and go on
            print(f"{variant}: failed ({type(err).__name__}: {err})", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    base = next((r["ms"] for r in rows if r["variant"] == "dense-cudnn"), None) or (rows[0]["ms"] if rows else None)
    print("| variant | density | step ms | vs dense-cudnn | peak GiB | graphs compiled |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["ms"] / base if base else float("nan")
        density = "n/a" if r["density"] is None else f"{r['density']:.3f}"
        print(f"| {r['variant']} | {density} | {r['ms']:.1f} | {ratio:.2f}x | {r['peak_gib']:.2f} | {r['graphs']} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"arch": args.arch, "batch": args.batch, "grid": grid, "rows": rows}, f, indent=2)
    return 0 if rows and len(rows) == len(variants) else 1


if __name__ == "__main__":
    sys.exit(main())
