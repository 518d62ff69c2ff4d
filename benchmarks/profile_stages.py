"""Run each pyramid-attention stage once at the Wan shape (density 0.15) for Nsight Compute.

    ncu --profile-from-start off --clock-control none --section SpeedOfLight \
        --section WarpStateStats python3 benchmarks/profile_stages.py

Every stage runs once untimed first (compilation), then once between cudaProfilerStart and
cudaProfilerStop, so the profiler sees exactly one launch of each kernel. `--set KEY=VALUE`
changes the kernel configuration (as kernel_bench.py's); `--scoring` adds block scoring and
level assignment at the default PSAConfig.
"""

from __future__ import annotations

import argparse
import math

import torch
from kernel_bench import BLOCK_M, BLOCK_N, MIXES, SHAPES, inputs, make_levels

from psa_train.kernels import tuning
from psa_train.kernels.block_lists import build_plan
from psa_train.kernels.triton_backward import launch_delta, launch_dkdv, launch_dq, pooled_grad_buffers
from psa_train.kernels.triton_forward import pyramid_forward
from psa_train.kernels.triton_pyramid import build_pyramid


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--scoring", action="store_true")
    args = ap.parse_args()
    tuning.CHANGES = tuning.parse_overrides(args.set)
    gen = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, length, dim = SHAPES["wan"]
    q, k, v, do = (t.detach() for t in inputs(SHAPES["wan"], "cuda", gen))
    levels = make_levels(batch, heads, math.ceil(length / BLOCK_M), math.ceil(length / BLOCK_N), MIXES[0.15],
                         "cuda", gen)
    cfg = tuning.get_config(dim, BLOCK_M, BLOCK_N, q.dtype)
    scale = 1 / math.sqrt(dim)

    def stages():
        if args.scoring:
            from psa_train.attention import PSAConfig, assign_levels, block_scores

            preset = PSAConfig()
            assign_levels(block_scores(q, k, preset.block_m, preset.block_n, preset.sample_fraction,
                                       preset.score_reduction), preset)
        plan = build_plan(levels, BLOCK_N)
        pyramid = build_pyramid(k, v)
        out, lse = pyramid_forward(q, k, v, pyramid, plan, BLOCK_M, BLOCK_N, scale, cfg)
        delta = launch_delta(out, do)
        pooled = pooled_grad_buffers(k)
        launch_dq(q, k, v, do, lse, delta, pyramid, pooled, plan, BLOCK_M, BLOCK_N, scale, cfg)
        launch_dkdv(q, k, v, do, lse, delta, pooled, plan, BLOCK_M, BLOCK_N, scale, cfg)

    stages()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    stages()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
