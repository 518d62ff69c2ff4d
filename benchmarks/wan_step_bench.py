"""One training step of the real Wan2.1-T2V-1.3B architecture: dense (cuDNN / flash SDPA) vs PSA.

Random weights in bf16, latents for 81 frames at 480x832 ([1, 16, 21, 60, 104] -> 21x30x52 =
32760 tokens), text embeddings [1, 512, 4096]; a step is forward + backward (MSE to a random
target, all weights trainable, activation checkpointing on), no optimizer. Prints the median
step time after warm-up and the peak memory (torch.cuda.max_memory_allocated) of each variant,
and the same for the self-attention alone (30 layers of [1, 12, 32760, 128] fwd+bwd), as tables.

    PYTHONPATH=. python3 benchmarks/wan_step_bench.py                  # on an H200
    PYTHONPATH=. python3 benchmarks/wan_step_bench.py --variants dense-cudnn psa --steps 5
    PYTHONPATH=. python3 benchmarks/wan_step_bench.py --arch tiny --device cpu --frames 17 \
        --height 64 --width 64 --text-len 32 --steps 1 --warmup 0      # CPU smoke test

PSA variants: "psa" (PSAConfig.default_quota(): quota bands 10 % full, 5 % 2x, 20 % 8x, nominal
density 0.15; or --preset wan21_1_3b), "psa-forced" (every block at level --forced-level, e.g. 8
gives density 0.125 with no selection cost), "no-attention" (self-attention replaced by
(q + k + v) / 3, which keeps every projection's gradient: the floor any attention speed-up can
reach, for reading the step target against).
"""

from __future__ import annotations

import argparse
import sys

import torch
from step_timing import median_time, sdpa_context

VARIANTS = ("dense-cudnn", "dense-flash", "psa", "psa-forced", "no-attention")


def _psa_config(args):
    from psa_train.attention import PSAConfig

    return getattr(PSAConfig, args.preset)(budget=args.budget)


def _no_attention(q, k, v, grid=None, sm_scale=None):
    """Stand-in for self-attention that costs ~nothing but still sends gradients to q, k, v."""
    return (q + k + v) / 3


def bench_step(args, variant: str, device: torch.device, dtype: torch.dtype) -> dict:
    from psa_train.models.wan import enable_psa_wan, load_wan_transformer, psa_density, psa_layers

    torch.manual_seed(0)
    with torch.device(device):  # random init directly on the device (fast for 1.3B / 14B)
        model = load_wan_transformer(args.arch, torch_dtype=dtype)
    model.to(device)
    model.train()
    if not args.no_checkpointing:
        model.enable_gradient_checkpointing()
    if variant.startswith("psa") or variant == "no-attention":
        enable_psa_wan(model, _psa_config(args))
        for layer in psa_layers(model):
            if variant == "psa-forced":
                layer.force_level = args.forced_level
            if variant == "no-attention":
                layer.forward = _no_attention
    cfg = model.config
    gen = torch.Generator(device="cpu").manual_seed(1)
    latent_frames = 1 + (args.frames - 1) // 4
    shape = (1, cfg.in_channels, latent_frames, args.height // 8, args.width // 8)
    x = torch.randn(shape, generator=gen).to(device, dtype)
    target = torch.randn(shape, generator=gen).to(device, dtype)
    text = torch.randn(1, args.text_len, cfg.text_dim, generator=gen).to(device, dtype)
    t = torch.tensor([500.0], device=device)
    tokens = latent_frames * (args.height // 16) * (args.width // 16)

    def step():
        with sdpa_context(variant, device):
            out = model(x, t, text, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(out.float(), target.float())
            loss.backward()
        for p in model.parameters():
            p.grad = None

    seconds, peak = median_time(step, args.steps, args.warmup, device)
    density = psa_density(model) if variant.startswith("psa") else (1.0 if variant.startswith("dense") else None)
    model = None  # free the weights before the next variant (the closure above shares this cell)
    return {"variant": variant, "tokens": tokens, "seconds": seconds, "peak_gib": peak, "density": density}


def bench_attention(args, variant: str, device: torch.device, dtype: torch.dtype, heads: int, head_dim: int,
                    layers: int, tokens: int, grid: tuple[int, int, int]) -> dict:
    """Self-attention alone: `layers` x (fwd + bwd) of [1, heads, tokens, head_dim]."""
    from psa_train.attention import PSAAttention

    gen = torch.Generator(device="cpu").manual_seed(2)
    q, k, v = (torch.randn(1, heads, tokens, head_dim, generator=gen).to(device, dtype).requires_grad_()
               for _ in range(3))
    grad = torch.randn(1, heads, tokens, head_dim, generator=gen).to(device, dtype)
    layer = None
    if variant.startswith("psa"):
        layer = PSAAttention(_psa_config(args))
        if variant == "psa-forced":
            layer.force_level = args.forced_level

    def run():
        with sdpa_context(variant, device):
            for _ in range(layers):
                if variant == "no-attention":
                    out = _no_attention(q, k, v)
                elif layer is None:
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
                else:
                    out = layer(q, k, v, grid=grid)
                out.backward(grad)
        q.grad = k.grad = v.grad = None

    seconds, peak = median_time(run, args.steps, args.warmup, device)
    density = layer.last_density if layer is not None else (None if variant == "no-attention" else 1.0)
    return {"variant": variant, "seconds": seconds, "peak_gib": peak, "density": density}


def _table(title: str, rows: list[dict], reference: str | None) -> str:
    ref = next((r["seconds"] for r in rows if r["variant"] == reference), None)
    lines = [title, f"{'variant':<12} {'time (ms)':>10} {'x ' + (reference or 'ref'):>16} {'peak GiB':>9} {'density':>8}"]
    for r in rows:
        ratio = f"{r['seconds'] / ref:.3f}" if ref else "-"
        density = "-" if r["density"] is None else f"{r['density']:.3f}"
        lines.append(f"{r['variant']:<12} {r['seconds'] * 1e3:>10.1f} {ratio:>16} {r['peak_gib']:>9.2f} {density:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="wan21-1.3b-arch", help="named Wan config (wan21-1.3b-arch, wan21-14b-arch, tiny)")
    parser.add_argument("--variants", nargs="+", default=["dense-cudnn", "dense-flash", "psa", "psa-forced"],
                        choices=VARIANTS)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--preset", default="default_quota", choices=["default_quota", "wan21_1_3b"])
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--forced-level", type=int, default=8, choices=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-checkpointing", action="store_true", help="turn activation checkpointing off")
    parser.add_argument("--skip-attention", action="store_true", help="only the full training step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    variants = list(dict.fromkeys(args.variants))
    if device.type != "cuda":  # no cuDNN / flash choice off CUDA: one plain dense SDPA row
        variants = list(dict.fromkeys("dense" if v.startswith("dense") else v for v in variants))

    steps = []
    for variant in variants:
        row = bench_step(args, variant, device, dtype)
        print(f"step {variant}: {row['seconds'] * 1e3:.1f} ms, {row['peak_gib']:.2f} GiB", file=sys.stderr, flush=True)
        steps.append(row)
    reference = "dense-cudnn" if "dense-cudnn" in variants else variants[0]
    tokens = steps[0]["tokens"]
    print()
    print(_table(f"training step (fwd+bwd, activation checkpointing={not args.no_checkpointing}), "
                 f"{args.arch}, {args.frames}x{args.height}x{args.width} -> {tokens} tokens, {args.dtype}",
                 steps, reference))

    if not args.skip_attention:
        from psa_train.models.wan import NAMED_CONFIGS

        cfg = NAMED_CONFIGS[args.arch]
        grid = (1 + (args.frames - 1) // 4, args.height // 16, args.width // 16)
        rows = [bench_attention(args, v, device, dtype, cfg["num_attention_heads"], cfg["attention_head_dim"],
                                cfg["num_layers"], tokens, grid) for v in variants]
        print()
        print(_table(f"self-attention only: {cfg['num_layers']} x fwd+bwd of "
                     f"[1, {cfg['num_attention_heads']}, {tokens}, {cfg['attention_head_dim']}]", rows, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
