"""The whole PSA layer (layout, scoring, assignment, attention) eager and under torch.compile.

Run on a GPU:  python benchmarks/compile_bench.py [--shapes vit,wan] [--presets default_quota,wan21_1_3b]

At short sequences the layer is bound by host time (its Python and launch overhead exceeds the
GPU work); torch.compile with mode="reduce-overhead" replays the layer's launches from CUDA graphs
(kernels/compiled_ops.py). Rows: shape x preset x mode ("eager", "compile": default inductor,
"compile+graphs": reduce-overhead), forward without grad and forward+backward, in ms
(triton.testing.do_bench medians), plus dense SDPA (cuDNN) for scale; "max |diff|" compares the
compiled output with the eager one.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from psa_train.attention import PSAAttention, PSAConfig

# (B, H, L, D, grid): the video-ViT shape of kernel_bench.py (8 x 14 x 14 tubelets) and Wan2.1-1.3B
# at 81 x 480 x 832 (21 x 30 x 52 latent patches)
SHAPES = {"vit": (8, 12, 1568, 64, (8, 14, 14)), "wan": (1, 12, 32760, 128, (21, 30, 52))}
MODES = ("eager", "compile", "compile+graphs")


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def layer_call(layer, mode):
    if mode == "eager":
        return layer
    return torch.compile(layer, fullgraph=True, mode="reduce-overhead" if mode == "compile+graphs" else None)


def time_modes(shape, preset, log):
    batch, heads, length, dim, grid = SHAPES[shape]
    gen = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
               .requires_grad_() for _ in range(3))
    dout = torch.randn(q.shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    layer = PSAAttention(getattr(PSAConfig, preset)())
    with torch.no_grad():
        reference = layer(q, k, v, grid=grid).float()
    rows = []
    for mode in MODES:
        call = layer_call(layer, mode)

        def forward():
            torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad():
                return call(q, k, v, grid=grid)

        def forward_backward():
            torch.compiler.cudagraph_mark_step_begin()
            return torch.autograd.grad(call(q, k, v, grid=grid), (q, k, v), dout)

        for _ in range(3):  # compilation, warm-up, CUDA graph recording
            forward()
            forward_backward()
        diff = (forward().float() - reference).abs().max().item()
        fwd, fwd_bwd = bench(forward), bench(forward_backward)
        rows.append((shape, preset, mode, fwd, fwd_bwd, diff, layer.last_density))
        log(f"{shape} {preset} {mode}: fwd {fwd:.3f} ms, fwd+bwd {fwd_bwd:.3f} ms, max |diff| {diff:.1e}, "
            f"density {layer.last_density:.3f}")
        torch._dynamo.reset()
    return rows


def dense_row(shape):
    """Dense SDPA with the cuDNN backend at the same shape, for scale."""
    batch, heads, length, dim, _ = SHAPES[shape]
    q, k, v = (torch.randn(batch, heads, length, dim, device="cuda", dtype=torch.bfloat16).requires_grad_()
               for _ in range(3))
    dout = torch.randn_like(q)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        with torch.no_grad():
            fwd = bench(lambda: F.scaled_dot_product_attention(q, k, v))
        fwd_bwd = bench(lambda: torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), dout))
    return shape, "dense SDPA (cuDNN)", "eager", fwd, fwd_bwd, 0.0, 1.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="vit,wan")
    ap.add_argument("--presets", default="default_quota,wan21_1_3b")
    args = ap.parse_args()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    for shape in args.shapes.split(","):
        for preset in args.presets.split(","):
            rows += time_modes(shape, preset, print)
        rows.append(dense_row(shape))
    print("\n| shape | preset | mode | fwd ms | fwd+bwd ms | max abs diff to eager | density |")
    print("|---|---|---|---|---|---|---|")
    for shape, preset, mode, fwd, fwd_bwd, diff, density in rows:
        print(f"| {shape} | {preset} | {mode} | {fwd:.3f} | {fwd_bwd:.3f} | {diff:.1e} | {density:.3f} |")


if __name__ == "__main__":
    main()
