"""Level assignment of block scores in one kernel: rank every row, cut it into bands, scatter.

The torch path (psa_train.attention.levels) sorts each row, gathers, takes a cumulative sum,
looks up bands and scatters: about ten launches for a few hundred thousand numbers. Here one
program owns ROWS whole rows of NPAD (a power of two >= nK) key blocks, held in registers:

  rank     each block becomes one int64 key, an order-preserving integer image of its float32
           score above NPAD-1-index in the low 16 bits, so sorting the keys descending is
           exactly torch.sort(descending=True, stable=True): higher score first, equal scores
           by lower index first. -0.0 counts as +0.0 (they compare equal in torch) and every
           NaN as one value above +inf (torch sorts NaN first, in index order). Padding lanes
           sort last. The sort is a bitonic network like tl.sort's, with the same compiled
           code (same shuffles and barriers in the PTX), but its partner exchange is a sum,
           which the Triton interpreter runs in numpy, over 10x faster than tl.sort there;
  bands    quota: the block at rank r gets the first level s whose cumulative count n_s is
           above r. threshold: the score mass ranked strictly before a block, in float64, is
           (inclusive cumsum - own score) / row sum, the same arithmetic as the torch path.
           Only the summation order differs, so both agree bit for bit whenever the partial
           sums are exact (ties, float32 scores within a modest range of magnitudes) and
           otherwise differ only for a mass within a rounding error of a boundary. The level
           is the first band whose boundary is above that mass, +inf marking a band that
           takes everything;
  scatter  rank 0 is level 1; every level is stored at the block's original index.

Scores may be float16, bfloat16 or float32 (all exact in float32, so ties survive); float64
scores would need a wider key and stay on the torch path. Scalars are kernel arguments (the
float64 boundaries as their bit patterns, since Python floats reach kernels as float32), so a
call never synchronises with the host. Under torch.compile the budget may instead sit in device
memory (`assign_levels_from_budget`): the kernel then computes the band edges itself, with the
host's float64 arithmetic (no multiply-add fusion), so a compiled graph or a CUDA graph follows an
annealed budget without compiling or recording again.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from .triton_launch import kernel

SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_BLOCKS = 8192  # key blocks per row that still fit in registers (and in a key's low 16 bits)
MIN_LANES = 16  # rows of 1-15 blocks still get a plain power-of-two tile
LANES_PER_PROGRAM = 1024  # short rows share a program up to this many lanes
# Rows of 512+ blocks take a program each, with a warp per 128 lanes: at the Wan shape on an H200
# 0.044 ms against 0.069 (2 rows of 512 per program, 4 warps) and 0.148 against 0.193 ms (1024
# blocks, 4 warps) for the same levels (BENCHMARKS.md, 2026-11-29 tenth session).
LONG_ROW = 512


@triton.jit
def _sort_keys(x, lane, nk, NPAD: tl.constexpr):
    """int64 keys whose descending order is torch's stable descending order of the scores x.

    Key = ordered float image * 2^16 + (NPAD-1-lane): below 2^47 in magnitude, so the pair
    sums of `_exchange` never overflow.
    """
    bits = x.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    bits = tl.where(magnitude == 0, 0, bits)  # -0.0 ties with +0.0
    bits = tl.where(magnitude > 0x7F800000, 0x7FC00000, bits)  # one NaN, above +inf
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # signed int order = float order
    ordered = tl.where(lane < nk, ordered, -2147483648)  # padding below -inf
    return (ordered.to(tl.int64) << 16) | (NPAD - 1 - lane).to(tl.int64)


@triton.jit
def _key_score(key):
    """The float32 score a key was built from (after the -0.0 / NaN canonicalisation)."""
    ordered = (key >> 16).to(tl.int32)
    bits = tl.where(ordered < 0, ordered ^ 0x7FFFFFFF, ordered)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _key_index(key, NPAD: tl.constexpr):
    return NPAD - 1 - (key & 0xFFFF).to(tl.int32)


@triton.jit
def _bit(N_DIMS: tl.constexpr, BIT: tl.constexpr):
    """Bit BIT of the flat lane index, shaped to broadcast over the [2] * N_DIMS hypercube."""
    return tl.reshape(tl.arange(0, 2), [1] * (N_DIMS - 1 - BIT) + [2] + [1] * BIT)


@triton.jit
def _exchange(h, descending, N_DIMS: tl.constexpr, BIT: tl.constexpr):
    """One compare-exchange between lanes that differ in bit BIT (ascending pairs where
    `descending` is 0). The partner is pair sum - self: a plain sum, which the interpreter
    runs in numpy (tl.sort's xor reduction runs element by element there)."""
    partner = tl.sum(h, axis=N_DIMS - 1 - BIT, keep_dims=True) - h
    upper = _bit(N_DIMS, BIT)
    return tl.where((h > partner) != (descending ^ upper), partner, h)


@triton.jit
def _sort_descending(x, LOG_N: tl.constexpr, N_DIMS: tl.constexpr):
    """Bitonic sort of distinct int64 keys [ROWS, 2^LOG_N] along the last axis, descending
    (N_DIMS = log2 of the element count)."""
    h = tl.reshape(x, [2] * N_DIMS)
    for stage in tl.static_range(1, LOG_N + 1):
        if stage < LOG_N:
            descending = _bit(N_DIMS, stage)  # alternate runs of 2^stage: a bitonic sequence
        else:
            descending = tl.full([], 1, tl.int32)
        for step in tl.static_range(stage):
            h = _exchange(h, descending, N_DIMS, stage - 1 - step)
    return tl.reshape(h, x.shape)


@triton.jit
def _quota_band(level, rank, count, s: tl.constexpr):
    return tl.where(rank < count, s, level)


@triton.jit
def _threshold_band(level, before, bound_bits, s: tl.constexpr):
    """Level s where the mass before a block is below the boundary (or the band takes all)."""
    bound_bits = bound_bits.to(tl.int64)
    everything = bound_bits == 0x7FF0000000000000  # +inf
    bound = bound_bits.to(tl.float64, bitcast=True)
    return tl.where((before < bound) | everything, s, level)


@triton.jit
def _mass_before(keys, rank, nk):
    """Normalised score mass ranked strictly before each block, float64, in rank order."""
    score = tl.where(rank < nk, _key_score(keys).to(tl.float64), 0.0)
    total = tl.sum(score, axis=1)
    tiny = tl.full([], 2.2250738585072014e-308, tl.float64)  # torch.finfo(float64).tiny
    total = tl.where(total < tiny, tiny, total)  # clamp_min that keeps NaN, as torch's does
    return (tl.cumsum(score, axis=1) - score) / total[:, None]


@triton.jit
def _interpolated(budget, target_bits):
    """1 - budget * (1 - b), float64, as `PSAConfig.boundaries` computes it."""
    return 1.0 - budget * (1.0 - target_bits.to(tl.int64).to(tl.float64, bitcast=True))


@triton.jit
def _quota_edge(budget, target_bits, one, nk, prev):
    """(count through this level, running max) with the arithmetic of `levels.quota_counts`."""
    b = _interpolated(budget, target_bits)
    n = tl.minimum((b * nk.to(tl.float64) + 0.5).to(tl.int64), nk)  # int(): truncation, b >= 0
    n = tl.where(b >= one, nk, n)
    prev = tl.maximum(prev, n)
    return tl.minimum(prev, nk), prev


@triton.jit
def _threshold_edge(budget, target_bits, one):
    """This level's boundary as float64 bits, +inf bits where the band takes everything."""
    b = _interpolated(budget, target_bits)
    return tl.where(b >= one, 0x7FF0000000000000, b.to(tl.int64, bitcast=True))


# The band scalars move with the budget (annealed every step): not specialised, so a training run
# never stops to compile the kernel again. With FROM_BUDGET the kernel derives them itself from
# the budget in memory (BUDGET: float64 bits) and the targets (b1..b8: float64 bits of the
# boundaries at budget 1): how a compiled graph or a CUDA graph follows an annealed budget.
@kernel(do_not_specialize=("n1", "n2", "n4", "n8", "b1", "b2", "b4", "b8", "one_bits"))
def _assign_kernel(S, OUT, BUDGET, n_rows, nk, stride_row, stride_col,
                   n1, n2, n4, n8, b1, b2, b4, b8, one_bits,
                   THRESHOLD: tl.constexpr, FROM_BUDGET: tl.constexpr, ROWS: tl.constexpr, NPAD: tl.constexpr,
                   LOG_N: tl.constexpr, N_DIMS: tl.constexpr):
    if FROM_BUDGET:
        budget = tl.load(BUDGET).to(tl.float64, bitcast=True)
        one = one_bits.to(tl.int64).to(tl.float64, bitcast=True)
        if THRESHOLD:
            b1, b2, b4, b8 = (_threshold_edge(budget, b1, one), _threshold_edge(budget, b2, one),
                              _threshold_edge(budget, b4, one), _threshold_edge(budget, b8, one))
        else:
            size = tl.full([], 0, tl.int64) + nk
            n1, prev = _quota_edge(budget, b1, one, size, tl.full([], 1, tl.int64))
            n2, prev = _quota_edge(budget, b2, one, size, prev)
            n4, prev = _quota_edge(budget, b4, one, size, prev)
            n8, prev = _quota_edge(budget, b8, one, size, prev)
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS).to(tl.int64)
    lane = tl.arange(0, NPAD)
    live = (row < n_rows)[:, None]
    x = tl.load(S + row[:, None] * stride_row + lane[None, :] * stride_col,
                mask=live & (lane < nk)[None, :], other=0.0).to(tl.float32)
    keys = _sort_descending(_sort_keys(x, lane[None, :], nk, NPAD), LOG_N, N_DIMS)
    rank = lane[None, :]
    level = tl.zeros([ROWS, NPAD], dtype=tl.int32)
    if THRESHOLD:  # finest band last so it wins, as in the torch path
        before = _mass_before(keys, rank, nk)
        level = _threshold_band(level, before, b8, 8)
        level = _threshold_band(level, before, b4, 4)
        level = _threshold_band(level, before, b2, 2)
        level = _threshold_band(level, before, b1, 1)
    else:
        level = _quota_band(level, rank, n8, 8)
        level = _quota_band(level, rank, n4, 4)
        level = _quota_band(level, rank, n2, 2)
        level = _quota_band(level, rank, n1, 1)
    level = tl.where(rank == 0, 1, level)  # the top block: never an empty row
    tl.store(OUT + row[:, None] * nk + _key_index(keys, NPAD), level, mask=live & (rank < nk))


def supports(scores: torch.Tensor) -> bool:
    """Whether `assign_levels_triton` takes these scores (dtype, row length, non-empty)."""
    return scores.dtype in SCORE_DTYPES and 0 < scores.shape[-1] <= MAX_BLOCKS and scores.numel() > 0


def _float_bits(value: float) -> int:
    """The float64 bit pattern of `value` as a Python int (a kernel's int64 argument)."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _launch_shape(nk: int, rows: int | None, num_warps: int | None) -> tuple[int, int, int]:
    npad = max(MIN_LANES, 1 << (nk - 1).bit_length())
    long_rows = npad >= LONG_ROW
    rows = rows or (1 if long_rows else max(1, LANES_PER_PROGRAM // npad))
    if rows & (rows - 1):
        raise ValueError(f"rows per program must be a power of two, got {rows}")
    num_warps = num_warps or min(16, max(2, rows * npad // (128 if long_rows else 256)))
    return npad, rows, num_warps


def assign_levels_triton(
    scores: torch.Tensor,
    *,
    counts: list[int] | None = None,
    bounds: list[float] | None = None,
    rows: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Levels (int32, same shape) of block scores [..., nK] ranked along the last dimension.

    Exactly one of: counts, the cumulative block counts through levels 1, 2, 4, 8 (quota
    bands, `quota_counts`); bounds, the cumulative mass boundaries of levels 1, 2, 4, 8
    (threshold bands), math.inf for a band that takes every remaining block. rows (rows per
    program) and num_warps override the launch heuristics, for benchmarks.
    """
    if (counts is None) == (bounds is None):
        raise ValueError("pass exactly one of counts (quota) or bounds (threshold)")
    ints = [int(c) for c in counts] if counts is not None else [0, 0, 0, 0]
    floats = [float(b) for b in bounds] if bounds is not None else [1.0] * 4
    return _launch(scores, None, ints, floats, bounds is not None, rows, num_warps)


def assign_levels_from_budget(scores: torch.Tensor, budget_bits: torch.Tensor, targets: list[float],
                              threshold: bool, full_at: float) -> torch.Tensor:
    """`assign_levels_triton` with the band edges derived inside the kernel from a budget in device
    memory: budget_bits, a 0-d int64 tensor holding the float64 bits of the budget (read when the
    kernel runs, so a CUDA graph replays with the current value); targets, the cumulative
    boundaries at budget 1 (`PSAConfig.target_boundaries`); full_at, the boundary from which a
    band takes every block (`config.BOUNDARY_ONE`). The edges come out as
    `PSAConfig.boundaries` and `levels.quota_counts` compute them, bit for bit (no multiply-add
    fusion in this kernel)."""
    if budget_bits.dtype != torch.int64 or budget_bits.numel() != 1 or budget_bits.device != scores.device:
        raise ValueError(f"budget_bits must be one int64 on {scores.device}, got {budget_bits.dtype} "
                         f"{tuple(budget_bits.shape)} on {budget_bits.device}")
    if len(targets) != 4:
        raise ValueError(f"targets must hold the boundaries of levels 1, 2, 4, 8, got {targets}")
    return _launch(scores, budget_bits, [0, 0, 0, 0], [float(t) for t in targets], threshold, None, None,
                   full_at)


def _launch(scores, budget_bits, ints, floats, threshold, rows, num_warps, full_at=1.0):
    if not supports(scores):
        raise ValueError(f"the Triton level assignment needs non-empty {SCORE_DTYPES} scores with at most "
                         f"{MAX_BLOCKS} key blocks per row, got {scores.dtype} {tuple(scores.shape)}")
    nk = scores.shape[-1]
    flat = scores.reshape(-1, nk)
    out = torch.empty(scores.shape, dtype=torch.int32, device=scores.device)
    npad, rows, num_warps = _launch_shape(nk, rows, num_warps)
    grid = (-(-flat.shape[0] // rows),)
    budget = out if budget_bits is None else budget_bits  # any pointer where the kernel reads none
    _assign_kernel[grid](flat, out, budget, flat.shape[0], nk, flat.stride(0), flat.stride(1),
                         *ints, *(_float_bits(b) for b in floats), _float_bits(full_at),
                         THRESHOLD=threshold, FROM_BUDGET=budget_bits is not None, ROWS=rows, NPAD=npad,
                         LOG_N=npad.bit_length() - 1, N_DIMS=(rows * npad).bit_length() - 1,
                         num_warps=num_warps, enable_fp_fusion=False)
    return out
