"""Does Gluon (the installed Triton) build an fp8 (e4m3) tensor-core product for sm_90? (no GPU)

Groundwork for block scoring with fp8 products (benchmarks/NOTES.md, seventh session): one
64 x 64 tile of S = Q Kᵀ from e4m3 operands in shared memory, compiled for an H100/H200 with
triton's bundled ptxas through benchmarks/kernel_resources.py. fp8 products need the k = 32
instruction shape in the accumulator layout (bf16 uses 16).

    python benchmarks/probes/fp8_wgmma_compiles.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kernel_resources as kr  # noqa: E402

from psa_train.kernels.gluon_support import (  # noqa: E402
    fence_async_shared,
    gl,
    gluon,
    warpgroup_mma,
    warpgroup_mma_wait,
)

FP8_ACC = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 32]))


@gluon.jit
def _fp8_qk(Q, K, S, D: gl.constexpr):
    blocked: gl.constexpr = gl.BlockedLayout([1, 16], [8, 4], [4, 1], [1, 0])
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, blocked))
    c = gl.arange(0, D, layout=gl.SliceLayout(0, blocked))
    shared: gl.constexpr = gl.NVMMASharedLayout.get_default_for([64, D], gl.float8e4nv)
    q = gl.allocate_shared_memory(gl.float8e4nv, [64, D], shared, gl.load(Q + r[:, None] * D + c[None, :]))
    k = gl.allocate_shared_memory(gl.float8e4nv, [64, D], shared, gl.load(K + r[:, None] * D + c[None, :]))
    fence_async_shared()
    s = warpgroup_mma(q, k.permute((1, 0)), gl.zeros([64, 64], gl.float32, layout=FP8_ACC), use_acc=False,
                      is_async=True)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    rows = gl.arange(0, 64, layout=gl.SliceLayout(1, FP8_ACC))
    cols = gl.arange(0, 64, layout=gl.SliceLayout(0, FP8_ACC))
    gl.store(S + rows[:, None] * 64 + cols[None, :], s)


def main():
    qk = torch.empty(64, 128, dtype=torch.float8_e4m3fn, device="meta")
    out = torch.empty(64, 64, dtype=torch.float32, device="meta")
    compiled, _ = kr.compile_launch(_fp8_qk, (qk, qk, out), dict(D=128, num_warps=4))
    ptx = compiled.asm["ptx"]
    products = sorted({line.split()[0] for line in ptx.splitlines() if "wgmma.mma_async" in line})
    print("tensor-core instructions:", products)
    print("registers, spill stores, spill loads, stack:",
          kr.ptxas_usage(kr.knobs.nvidia.ptxas.path, ptx, compiled.metadata.name))


if __name__ == "__main__":
    main()
