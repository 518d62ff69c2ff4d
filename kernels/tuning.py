"""Launch configurations of the pyramid attention kernels, keyed on (D, block_m, block_n, dtype).

``MEASURED`` holds the entries timed on an H200 (benchmarks/NOTES.md says how and when); any
other key falls back to ``default_config``. Tiles are pooled-row tiles per level (1, 2, 4, 8);
``dkdv_ksub`` x ``dkdv_msub`` is the key-stationary pass's (keys x queries) tile. The benchmark
sets ``OVERRIDE`` to time variants without editing the table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class KernelConfig:
    fwd_tiles: tuple[int, int, int, int] = (64, 64, 64, 64)
    fwd_warps: int = 8
    fwd_stages: int = 3
    dq_tiles: tuple[int, int, int, int] = (64, 64, 64, 64)
    dq_warps: int = 8
    dq_stages: int = 2
    dkdv_ksub: int = 64
    dkdv_msub: int = 64
    dkdv_warps: int = 4
    dkdv_stages: int = 2
    # level-1 K/V tiles (fwd, dQ) and Q/dO tiles (dK/dV) through TMA descriptors
    fwd_tma: bool = True
    dq_tma: bool = True
    dkdv_tma: bool = True
    # pooled levels whose key block is >= 16 rows (block_n / s): one entry per tile, TMA loads
    # (forward: faster; dQ pass: slower than gathering several entries per tile, NOTES.md v4)
    fwd_pooled_tma: bool = True
    dq_pooled_tma: bool = False
    # the forward's query tile loaded by TMA into shared memory, where the tensor-core products
    # read it without a register copy (fewer spills; NOTES.md, second session)
    fwd_q_tma: bool = True
    heavy_first: bool = True  # grid order by work (two argsorts per call) or plain block order
    dq_pooled_atomics: bool = True  # False only to time the dQ pass without them (wrong grads)


def default_config(dim: int, block_m: int, block_n: int, dtype: torch.dtype) -> KernelConfig:
    """Unmeasured keys: the shapes that won at D=128 (4-warp forward, 8-warp dQ, TMA)."""
    warps = 8 if block_m == 128 else 4
    if dtype == torch.float32:  # fp32 operands take twice the registers/shared memory
        small = (32, 32, 32, 32)
        return KernelConfig(small, warps, 2, small, warps, 1, 32, 32, 4, 1, False, False, False)
    return KernelConfig(fwd_warps=4, fwd_stages=3, dq_warps=warps, dq_stages=3, dkdv_warps=4)


# (D, block_m, block_n, dtype name) -> KernelConfig; from device sweeps (benchmarks/NOTES.md).
# fp16 shares the bf16 entries (same tensor-core path).
MEASURED: dict[tuple[int, int, int, str], KernelConfig] = {
    # H200, triton 3.6, Wan shape, density 0.15 and 1.0 (sweeps of 2026-11-28, NOTES.md v2-v5;
    # TMA-loaded query tile and pooled entries in the forward are KernelConfig defaults)
    (128, 128, 64, "bfloat16"): KernelConfig(
        fwd_tiles=(64, 32, 32, 32), fwd_warps=4, fwd_stages=3,
        dq_tiles=(64, 64, 64, 64), dq_warps=8, dq_stages=3,
        dkdv_ksub=64, dkdv_msub=64, dkdv_warps=4, dkdv_stages=2,
    ),
    # block_n 32 (the Wan preset): the dQ pass gathers two 32-key level-1 entries per 64-row tile
    # instead of TMA tiles of one (dQ pass 6.54 -> 6.23 ms at density 0.15; NOTES.md, 20:58 UTC)
    (128, 128, 32, "bfloat16"): KernelConfig(
        fwd_tiles=(64, 64, 64, 64), fwd_warps=4, fwd_stages=3,
        dq_tiles=(64, 64, 64, 64), dq_warps=8, dq_stages=3, dq_tma=False,
        dkdv_ksub=64, dkdv_msub=64, dkdv_warps=4, dkdv_stages=2,
    ),
}

# When set (benchmark variants), used for every launch.
OVERRIDE: KernelConfig | None = None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def get_config(dim: int, block_m: int, block_n: int, dtype: torch.dtype) -> KernelConfig:
    if OVERRIDE is not None:
        return OVERRIDE
    key = (dim, block_m, block_n, _dtype_name(dtype if dtype != torch.float16 else torch.bfloat16))
    return MEASURED.get(key) or default_config(dim, block_m, block_n, dtype)


__all__ = ["KernelConfig", "MEASURED", "OVERRIDE", "default_config", "get_config", "replace"]
