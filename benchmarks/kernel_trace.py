"""Where one forward + backward of the Triton pyramid attention spends its GPU time.

Runs the API call (`pyramid_attention(..., backend="triton")`) at a shape (Wan or ViT) and a density of
the kernel table under torch.profiler and prints, per kernel, its GPU time per call, then the
sum of kernel times against the wall time per call. The difference is time the GPU sat idle
(gaps between launches, or the host falling behind; the profiler adds to both), which stage
timings of kernels run alone cannot show.
`--host` instead profiles the Python side (cProfile) of calls issued while the GPU is busy: the
host time per call and the functions it goes to. `--scoring` traces block scoring + level
assignment at the default PSAConfig (kernel_bench's scoring row) instead of the attention.

    python benchmarks/kernel_trace.py [--shape wan|vit] [--density 0.15] [--calls 20] [--forward-only] [--host]
                                      [--scoring]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import time
from collections import defaultdict

import torch
from kernel_bench import BLOCK_M, BLOCK_N, MIXES, SHAPES, fwd_bwd, inputs, make_levels
from torch.profiler import ProfilerActivity, profile

from psa_train.attention import PSAConfig, assign_levels, block_scores
from psa_train.kernels import pyramid_attention


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="wan", choices=sorted(SHAPES))
    ap.add_argument("--density", type=float, default=0.15, choices=sorted(MIXES))
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--forward-only", action="store_true")
    ap.add_argument("--host", action="store_true", help="profile the host side instead (cProfile)")
    ap.add_argument("--scoring", action="store_true", help="block scoring + level assignment instead")
    args = ap.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, length, dim = SHAPES[args.shape]
    q, k, v, do = inputs(SHAPES[args.shape], "cuda", gen)
    levels = make_levels(batch, heads, math.ceil(length / BLOCK_M), math.ceil(length / BLOCK_N),
                         MIXES[args.density], "cuda", gen)
    scale = 1 / math.sqrt(dim)

    def ours(q, k, v):
        return pyramid_attention(q, k, v, levels, BLOCK_M, BLOCK_N, scale, backend="triton")

    forward_and_backward = fwd_bwd(ours, q, k, v, do)
    psa = PSAConfig()

    def call():
        if args.scoring:
            scores = block_scores(q.detach(), k.detach(), psa.block_m, psa.block_n, psa.sample_fraction,
                                  psa.score_reduction)
            assign_levels(scores, psa)
        elif args.forward_only:
            with torch.no_grad():
                ours(q, k, v)
        else:
            forward_and_backward()

    for _ in range(5):  # compile and warm up
        call()
    torch.cuda.synchronize()
    if args.host:
        profile_host(call, args.calls)
        return
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - start) * 1e3 / args.calls
    per_kernel = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[event.name] += event.device_time / 1e3 / args.calls
    busy = sum(per_kernel.values())
    what = "scoring + assignment" if args.scoring else "forward" if args.forward_only else "forward+backward"
    print(f"{what}, {args.shape} shape {SHAPES[args.shape]}, density {args.density}, {args.calls} calls (ms per call)")
    for name, ms in sorted(per_kernel.items(), key=lambda kv: -kv[1]):
        print(f"{ms:8.3f}  {name[:110]}")
    print(f"{busy:8.3f}  sum of kernel times")
    print(f"{wall_ms:8.3f}  wall time per call (profiler on); idle {wall_ms - busy:.3f}")


def profile_host(call, calls):
    """Host time per call, measured on calls queued behind a long GPU job so the host never waits
    for the GPU (the launch queue holds far more than `calls` calls' launches), and its top
    functions by own time."""
    busy = torch.randn(8192, 8192, device="cuda")
    profiler = cProfile.Profile()
    for label, prof in (("", None), (" (cProfile on)", profiler)):
        for _ in range(20):  # ~0.4 s of fp32 matrix products ahead of the calls
            busy @ busy
        start = time.perf_counter()
        if prof:
            prof.enable()
        for _ in range(calls):
            call()
        if prof:
            prof.disable()
        host_ms = (time.perf_counter() - start) * 1e3 / calls
        torch.cuda.synchronize()
        print(f"host time per call{label}: {host_ms:.3f} ms")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
