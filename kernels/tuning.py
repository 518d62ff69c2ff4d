"""Launch configurations of the pyramid attention kernels, keyed on (D, block_m, block_n, dtype).

``MEASURED`` holds the entries timed on an H200 (benchmarks/NOTES.md says how and when); any
other key falls back to ``default_config``. Tiles are pooled-row tiles per level (1, 2, 4, 8);
``dkdv_ksub`` x ``dkdv_msub`` is the key-stationary pass's (keys x queries) tile. The benchmark
sets ``OVERRIDE`` to time variants without editing the table.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, fields, replace

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
    # levels whose tiles of whole pooled rows skip the per-column bias: one fused multiply-add
    # per logit instead of three ops; a partial last key block is still masked (NOTES.md: third
    # session for TMA tiles, forward kernel 2.40 -> 2.30 ms; fourth for gathered ones, 2.32 -> 2.22)
    fwd_clean_levels: tuple[int, ...] = (1, 2, 4, 8)
    dq_clean_levels: tuple[int, ...] = (1, 2, 4, 8)
    # levels whose clean tiles are taken two per softmax update (one rescale of the output per
    # pair: narrow pooled tiles spend as much on it as on their logits)
    fwd_pair_levels: tuple[int, ...] = ()
    # the dK/dV pass by the warp-specialised Gluon kernel (gluon_backward; Hopper, 16-bit, D 64/128,
    # block_m and block_n multiples of 64; the Triton kernel elsewhere)
    dkdv_gluon: bool = False
    # the dQ pass's level-1 pairs by the Gluon kernel (gluon_backward, block_m 128), its pooled
    # levels by the Triton kernel into an fp32 partial the Gluon kernel adds in
    dq_gluon: bool = False
    # with dq_gluon: the pooled levels too by a Gluon kernel (gluon_pooled_dq) whose own warpgroup
    # computes their dK̄/dV̄ and atomics; key tiles in flight, registers of consumers / that warpgroup.
    # 184/120 with the products one after the other: dQ pass 4.00-4.07 ms against 4.27-4.29 at
    # 192/104 and 4.29-4.39 pipelined (H200, 2026-11-29 05:50-05:56 UTC, NOTES.md eighth session)
    dq_pooled_gluon: bool = False
    dq_pooled_gluon_stages: int = 2
    dq_pooled_gluon_regs: tuple[int, int] = (184, 120)
    dq_pooled_gluon_pipelined: bool = False  # True: the warpgroup's atomics under its next product
    # the forward by the warp-specialised Gluon kernel (gluon_forward; Hopper, 16-bit, D 64/128,
    # block_m 128, block_n a multiple of 64): key tiles of fwd_gluon_tile rows, that many in flight
    fwd_gluon: bool = False
    fwd_gluon_tile: int = 64
    fwd_gluon_stages: int = 3
    fwd_gluon_pingpong: bool = False  # consumers issue their products in turns (gluon_forward)
    heavy_first: bool = True  # grid order by work (a ranking launch per direction) or block order
    dq_pooled_atomics: bool = True  # False only to time the dQ pass without them (wrong grads)


def default_config(dim: int, block_m: int, block_n: int, dtype: torch.dtype) -> KernelConfig:
    """Unmeasured keys: what won the sweeps of the nearest measured keys (4-warp forward; the dQ
    pass at 8 warps for D=128 with block_m 128, else 4; at D=64 128-query dK/dV tiles)."""
    if dtype == torch.float32:  # fp32 operands take twice the registers/shared memory
        small = (32, 32, 32, 32)
        warps = 8 if block_m == 128 else 4
        return KernelConfig(small, warps, 2, small, warps, 1, 32, 32, 4, 1, False, False, False)
    dq_warps = 8 if dim == 128 and block_m == 128 else 4
    return KernelConfig(fwd_warps=4, fwd_stages=3, dq_warps=dq_warps, dq_stages=2, dkdv_warps=4,
                        dkdv_msub=128 if dim == 64 else 64)


def _measured(fwd, dq, dkdv, **other) -> KernelConfig:
    """An entry from the sweep's winners: fwd (tiles, warps, stages), dq (warps, stages),
    dkdv (ksub, msub, warps, stages); dQ tiles are 64 rows on every level."""
    (fwd_tiles, fwd_warps, fwd_stages), (dq_warps, dq_stages), (ksub, msub, dkdv_warps, dkdv_stages) = fwd, dq, dkdv
    return KernelConfig(fwd_tiles=fwd_tiles, fwd_warps=fwd_warps, fwd_stages=fwd_stages, dq_tiles=(64, 64, 64, 64),
                        dq_warps=dq_warps, dq_stages=dq_stages, dkdv_ksub=ksub, dkdv_msub=msub,
                        dkdv_warps=dkdv_warps, dkdv_stages=dkdv_stages, **other)


# (D, block_m, block_n, dtype name) -> KernelConfig; from device sweeps (benchmarks/NOTES.md).
# fp16 shares the bf16 entries (same tensor-core path). H200, triton 3.6, `kernel_bench.py
# --sweep-only --sweep-keys ...` of 2026-11-28: per pass the fastest of the SWEEP_* candidates by
# (time at density 0.15) + (time at density 1.0) / 6, at B=1, H=12, L=32760 for D=128 and D=64;
# dQ and dK/dV from the 22:13-22:27 UTC sweeps, the forward from the 23:38-23:41 UTC one (paired
# tiles). Every entry takes the bias-free step on whole pooled rows.
NARROW = (64, 32, 32, 32)
POOLED, ALL = (2, 4, 8), (1, 2, 4, 8)  # levels whose clean tiles go two per softmax update
MEASURED: dict[tuple[int, int, int, str], KernelConfig] = {
    # pooled levels gathered two level-2 / eight level-8 blocks per 64-row tile (bias-free):
    # forward kernel 2.21-2.31 -> 2.11-2.25 ms at density 0.15 (two A/Bs, 23:54-23:56 UTC),
    # about 1 % slower at density 1.0; pairing TMA level-2
    # tiles instead raised ptxas spills (120/180 -> 164/268 B) and lost 7 % at density 1.0
    # the Gluon backward kernels (2026-11-29 ~01:50 UTC, `--variants --variant-block-ns 64`): dK/dV pass
    # 3.18 -> 2.46 ms, dQ pass 5.03 -> 4.50 ms at density 0.15 (NOTES.md, fifth session)
    # the Gluon forward (2026-11-29 ~02:57 UTC, same command): forward kernel 2.14 -> 2.08 ms with four
    # key tiles in flight and the consumers' products in turns (2.10 without turns, 2.12-2.21 at three)
    # the pooled levels' dQ and dK̄/dV̄ by the Gluon kernel with 16-byte atomics (2026-11-29 05:56 UTC,
    # same command): dQ pass 4.45-4.49 -> 4.00-4.07 ms, forward+backward 9.40-9.61 -> 8.98-9.06 ms
    (128, 128, 64, "bfloat16"): _measured(((64, 64, 32, 64), 4, 2), (8, 3), (64, 64, 4, 2), fwd_pooled_tma=False,
                                          dkdv_gluon=True, dq_gluon=True, fwd_gluon=True, fwd_gluon_stages=4,
                                          fwd_gluon_pingpong=True, dq_pooled_gluon=True),
    # block_n 32 (the Wan preset): the dQ pass gathers two 32-key level-1 entries per 64-row tile
    # instead of TMA tiles of one (dQ pass 6.54 -> 6.23 ms at density 0.15; NOTES.md, 20:58 UTC);
    # the forward pairs its 32-key level-1 tiles (2.92 -> 2.48 ms; 16.2 -> 14.6 ms at density 1)
    (128, 128, 32, "bfloat16"): _measured((NARROW, 4, 2), (8, 2), (64, 64, 4, 2), dq_tma=False,
                                          fwd_pair_levels=ALL),
    (128, 128, 128, "bfloat16"): _measured((NARROW, 4, 2), (8, 2), (64, 64, 4, 2), fwd_pair_levels=POOLED),
    (128, 64, 64, "bfloat16"): _measured((NARROW, 4, 2), (4, 2), (64, 64, 4, 2), fwd_pair_levels=POOLED),
    (64, 128, 64, "bfloat16"): _measured((NARROW, 4, 2), (4, 2), (64, 128, 4, 2), fwd_pair_levels=ALL),
    (64, 128, 32, "bfloat16"): _measured((NARROW, 4, 3), (4, 2), (32, 128, 4, 2)),
    (64, 128, 128, "bfloat16"): _measured((NARROW, 4, 2), (4, 2), (64, 128, 4, 2), fwd_pair_levels=ALL),
    (64, 64, 64, "bfloat16"): _measured((NARROW, 4, 3), (4, 2), (64, 64, 4, 2)),
}

# When set (benchmark variants), used for every launch.
OVERRIDE: KernelConfig | None = None
# Field changes applied on top of whatever config a key gets (benchmark --set: one change timed
# across keys that keep their own tuned entries).
CHANGES: dict = {}


def parse_overrides(items: list[str]) -> dict:
    """KernelConfig changes from KEY=VALUE strings (values as Python literals), for the benchmark
    scripts' --set options."""
    names = {f.name for f in fields(KernelConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of {sorted(names)}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--set {item!r}: value must be a Python literal") from None
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def get_config(dim: int, block_m: int, block_n: int, dtype: torch.dtype) -> KernelConfig:
    if OVERRIDE is not None:
        return OVERRIDE
    key = (dim, block_m, block_n, _dtype_name(dtype if dtype != torch.float16 else torch.bfloat16))
    cfg = MEASURED.get(key) or default_config(dim, block_m, block_n, dtype)
    return replace(cfg, **CHANGES) if CHANGES else cfg


__all__ = ["CHANGES", "KernelConfig", "MEASURED", "OVERRIDE", "default_config", "get_config", "parse_overrides", "replace"]
