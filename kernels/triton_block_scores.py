"""Block scoring on the GPU: sampled attention pooled per (query block, key block), in one kernel.

Block scores (psa_train.attention.scoring) need, for every sampled query row r, the softmax mass
of every key block j over the sampled keys, mass_rj = Σ_{sampled keys of j} 2^(x_rk - LSE_r),
with x the logits in the exp2 domain and LSE_r the row's log-sum-exp (base 2) over all sampled
keys; then the sampled rows of each query block are pooled (max, or mean over valid samples).

One program owns BLOCK_Q sampled query rows (whole query blocks) of one (batch, head):
  pass 1  walks the sampled keys a tile at a time (tl.dot). Per tile it stores the block sums
          s_rj = Σ 2^(x_rk - m_rt) against the tile's row max m_rt into a scratch [B, H, Sq, nK]
          (fp32 or fp16) and m_rt into [B, H, Sq, tiles], and keeps the online row max / sum
          that give LSE_r (flash-style). No logarithm per block: the loop is bound by the
          exponentials (MUFU) and the instruction issue, so every op per logit counts;
  pass 2  re-reads its own rows of the scratch (just written, partly still in L2) in chunks of
          key blocks, mass_rj = s_rj · 2^(m_rt - LSE_r), and pools each query block's samples;
  pass 3  (optional) divides the pooled rows by their sums, so every row sums to 1.
The Sq × Sk logits never reach memory, and neither does the [Sq, nK] mass tensor in torch.

Samples arrive as padded tables (scoring.padded_samples): every block owns a power of two of
consecutive slots, unused slots are invalid. Key slots that are invalid get -inf logits; query
slots that are invalid still compute (they point at a real token) but are left out of pooling.
Tiles made only of fully sampled key blocks (all but the tail at the default quarter sampling)
skip the masking.

Operands: the sampled rows of q and k are gathered once per call (index_select), so the kernel
reads plain consecutive tiles (``loads`` "contiguous"), or reads them through TMA descriptors
("tma", the CUDA default). Loading rows through the index tables instead, and per-block maxima
instead of the indicator-product sum, were measured slower on an H200 and removed (BENCHMARKS.md).
The Gluon pass 1 needs no gather where the sample tables are evenly strided (the default quarter
is): its TMA descriptors sit on strided views of q and k (`_rows_in_place`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import cdiv, kernel

LOG2_E = 1.4426950408889634
LOADS = ("contiguous", "tma")
PASS1 = ("triton", "gluon", "auto")
GLUON_POOL = ("triton", "gluon")
SCRATCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Defaults of block_scores_triton (kernel_bench.py --scoring-only times the alternatives). The
# Gluon pass 1 (CUDA only) takes four consumers and 128-key steps, the fastest on an H200
# (2026-11-29, see gluon_block_scores).
DEFAULTS = {"loads": "contiguous", "block_q": 128, "tile_slots": 128, "num_warps": 8, "num_stages": 2,
            "chunk": 64, "scratch": "fp32", "max_registers": "auto", "pass1": "triton", "gluon_consumers": 4,
            "gluon_tile": 128, "gluon_pool": "triton"}
# On CUDA: the fastest measured on an H200 at the Wan shape (BENCHMARKS.md, 2026-11-28 20:05 UTC:
# 0.73 ms at block_n 64, 0.80 ms at 32, against 0.80 / 0.92 ms with DEFAULTS' loads and scratch;
# 2026-11-29: the Gluon pass 1 where it runs, and after it the Gluon pooling).
CUDA_DEFAULTS = {"loads": "tma", "scratch": "fp16", "pass1": "auto", "gluon_pool": "gluon"}


@triton.jit
def _load_rows(base, DESC, desc_row, first, count, stride_l,
               NUM: tl.constexpr, HEAD_DIM: tl.constexpr, LOADS: tl.constexpr, MASKED: tl.constexpr):
    """Rows first .. first+NUM of a sampled operand, [NUM, HEAD_DIM].

    MASKED: rows >= count may occur (they read as zeros, or for "tma" as whatever follows: the
    next head's rows; callers mask those rows out). Unmasked loads are a little cheaper.
    """
    if LOADS == "tma":
        return DESC.load([(desc_row + first).to(tl.int32), 0])
    idx = first + tl.arange(0, NUM)
    d = tl.arange(0, HEAD_DIM)
    if MASKED:
        ok = idx < count
        return tl.load(base + idx[:, None] * stride_l + d[None, :], mask=ok[:, None], other=0.0)
    return tl.load(base + idx[:, None] * stride_l + d[None, :])


@triton.jit
def _raw_logits(q, k, INTERPRETED: tl.constexpr):
    """q kᵀ in fp32, unscaled."""
    if INTERPRETED:  # the interpreter's half-precision tl.dot is wrong (triton 3.8): use fp32
        return tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
    return tl.dot(q, tl.trans(k))


@triton.jit
def _block_sums_dot(raw, scale, TILE: tl.constexpr, SLOTS: tl.constexpr, OUT_COLS: tl.constexpr,
                    INTERPRETED: tl.constexpr):
    """Per-block sums with one exp per logit and the segmented sum as a matrix product.

    raw: unscaled logits (-inf where masked); scale > 0 takes them to the exp2 domain, so the
    row max is taken before scaling and scale-and-shift is one fma per logit. Returns (sums
    [rows, OUT_COLS] against the tile row max, that max, the sums' total). A block whose terms
    all underflow from the max (under ~2^-126 of it) sums to 0. The sums run on bf16 weights
    (up to 0.4 % rounding per term) with fp32 accumulation.
    """
    row_max = tl.max(raw, axis=1)
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max) * scale
    weights = tl.exp2(raw * scale - safe_max[:, None])
    cols = tl.arange(0, TILE)
    owner = tl.arange(0, OUT_COLS)
    indicator = ((cols[:, None] // SLOTS) == owner[None, :]).to(tl.float32)
    if INTERPRETED:
        sums = tl.dot(weights, indicator, input_precision="ieee")
    else:
        sums = tl.dot(weights.to(tl.bfloat16), indicator.to(tl.bfloat16))
    return sums, safe_max, tl.sum(sums, axis=1)


@triton.jit
def _store_tile(SCRATCH, MAXES, sums, tile_max, row_ids, row_ok, first_block, num_k_blocks, num_tiles,
                BLOCKS_PER_TILE: tl.constexpr, OUT_COLS: tl.constexpr):
    """Pass 1's output for one key tile: block sums (the first BLOCKS_PER_TILE of OUT_COLS
    columns, in the scratch's dtype) and the row max they are taken against.

    fp16 sums (at most the tile's slot count) lose blocks under 2^-24 of the tile's largest
    term and round the rest by 0.05 %; fp32 keeps them as computed.
    """
    blocks = first_block + tl.arange(0, OUT_COLS)
    in_tile = (tl.arange(0, OUT_COLS) < BLOCKS_PER_TILE) & (blocks < num_k_blocks)
    ptr = SCRATCH + row_ids[:, None] * num_k_blocks + blocks[None, :]
    tl.store(ptr, sums.to(SCRATCH.dtype.element_ty), mask=row_ok[:, None] & in_tile[None, :])
    tl.store(MAXES + row_ids * num_tiles + first_block // BLOCKS_PER_TILE, tile_max, mask=row_ok)


@triton.jit
def _key_tile(q, k_base, K_DESC, K_VALID, SCRATCH, MAXES, row_max, row_sum, row_ids, row_ok, bh,
              first_block, num_k_rows, num_k_blocks, num_tiles, stride_kl, scale,
              HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, K_SLOTS: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr,
              OUT_COLS: tl.constexpr, LOADS: tl.constexpr, MASKED: tl.constexpr,
              INTERPRETED: tl.constexpr):
    """One step of pass 1 over BLOCKS_PER_TILE key blocks: sums to the scratch; new (row max, sum).

    MASKED tiles may hold invalid key slots or run past the last block; unmasked ones skip the
    validity bias and the load masks.
    """
    first_col = first_block * K_SLOTS
    k = _load_rows(k_base, K_DESC, bh * num_k_rows, first_col, num_k_rows, stride_kl,
                   BLOCKS_PER_TILE * K_SLOTS, HEAD_DIM, LOADS, MASKED)
    raw = _raw_logits(q, k, INTERPRETED)
    if MASKED:
        cols = first_col + tl.arange(0, BLOCKS_PER_TILE * K_SLOTS)
        valid = tl.load(K_VALID + cols, mask=cols < num_k_rows, other=0) != 0
        raw += tl.where(valid, 0.0, float("-inf"))[None, :]
    sums, tile_max, tile_sum = _block_sums_dot(raw, scale, BLOCKS_PER_TILE * K_SLOTS, K_SLOTS, OUT_COLS,
                                               INTERPRETED)
    _store_tile(SCRATCH, MAXES, sums, tile_max, row_ids, row_ok, first_block, num_k_blocks, num_tiles,
                BLOCKS_PER_TILE, OUT_COLS)
    new_max = tl.maximum(row_max, tile_max)
    row_sum = row_sum * tl.exp2(row_max - new_max) + tile_sum * tl.exp2(tile_max - new_max)
    return new_max, row_sum


@triton.jit
def _pool_query_blocks(SCRATCH, MAXES, OUT, Q_VALID, row_lse, bh, tile, num_q_rows, num_q_blocks, num_k_blocks,
                       num_tiles, BLOCK_Q: tl.constexpr, Q_SLOTS: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr,
                       TILES: tl.constexpr, MEAN: tl.constexpr):
    """Pass 2: masses of this program's rows, pooled per query block, stored; returns row sums.

    Works on [rows, TILES, BLOCKS_PER_TILE] blocks at a time, so each tile's factor
    2^(m_rt - LSE_r) costs one exp per row and tile, not one per block.
    """
    rows = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_q_rows
    row_ids = bh * num_q_rows + rows
    sampled = tl.load(Q_VALID + rows, mask=row_ok, other=0) != 0
    groups = tile * (BLOCK_Q // Q_SLOTS) + tl.arange(0, BLOCK_Q // Q_SLOTS)
    group_ok = groups < num_q_blocks
    count = tl.sum(tl.reshape(sampled.to(tl.float32), (BLOCK_Q // Q_SLOTS, Q_SLOTS)), axis=1)
    count = tl.maximum(count, 1.0)
    total = tl.zeros((BLOCK_Q // Q_SLOTS,), dtype=tl.float32)
    for first_tile in range(0, num_tiles, TILES):
        tiles = first_tile + tl.arange(0, TILES)
        blocks = tiles[:, None] * BLOCKS_PER_TILE + tl.arange(0, BLOCKS_PER_TILE)[None, :]  # [TILES, per tile]
        block_ok = blocks < num_k_blocks
        maxes = tl.load(MAXES + row_ids[:, None] * num_tiles + tiles[None, :],
                        mask=sampled[:, None] & (tiles < num_tiles)[None, :], other=float("-inf"))
        factor = tl.exp2(maxes - row_lse[:, None])  # <= 1, and 0 where not sampled
        sums = tl.load(SCRATCH + row_ids[:, None, None] * num_k_blocks + blocks[None, :, :],
                       mask=sampled[:, None, None] & block_ok[None, :, :], other=0.0)
        mass = sums.to(tl.float32) * factor[:, :, None]
        grouped = tl.reshape(mass, (BLOCK_Q // Q_SLOTS, Q_SLOTS, TILES, BLOCKS_PER_TILE))
        if MEAN:
            pooled = tl.sum(grouped, axis=1) / count[:, None, None]
        else:
            pooled = tl.max(grouped, axis=1)
        total += tl.sum(tl.sum(pooled, axis=2), axis=1)
        tl.store(OUT + (bh * num_q_blocks + groups)[:, None, None] * num_k_blocks + blocks[None, :, :], pooled,
                 mask=group_ok[:, None, None] & block_ok[None, :, :])
    return total


@triton.jit
def _normalize_rows(OUT, total, bh, tile, num_q_blocks, num_k_blocks, GROUPS: tl.constexpr, CHUNK: tl.constexpr):
    """Pass 3: divide this program's pooled rows (written in pass 2) by their sums."""
    groups = tile * GROUPS + tl.arange(0, GROUPS)
    group_ok = groups < num_q_blocks
    inv = 1.0 / tl.maximum(total, 1.1754943508222875e-38)
    for first in range(0, num_k_blocks, CHUNK):
        blocks = first + tl.arange(0, CHUNK)
        ptr = OUT + (bh * num_q_blocks + groups)[:, None] * num_k_blocks + blocks[None, :]
        mask = group_ok[:, None] & (blocks < num_k_blocks)[None, :]
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) * inv[:, None], mask=mask)


@kernel
def _block_scores_kernel(
    Q, K, Q_DESC, K_DESC, Q_VALID, K_VALID, SCRATCH, MAXES, OUT,
    num_heads, stride_qb, stride_qh, stride_ql, stride_kb, stride_kh, stride_kl,
    num_q_rows, num_k_rows, num_q_blocks, num_k_blocks, clean_blocks, num_tiles, sm_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, Q_SLOTS: tl.constexpr, K_SLOTS: tl.constexpr,
    BLOCKS_PER_TILE: tl.constexpr, OUT_COLS: tl.constexpr, POOL_TILES: tl.constexpr, CHUNK: tl.constexpr,
    LOADS: tl.constexpr, REDUCE: tl.constexpr, NORMALIZE: tl.constexpr, STAGES: tl.constexpr,
    INTERPRETED: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    batch, head = bh // num_heads, bh % num_heads
    q_base = Q + batch * stride_qb + head * stride_qh
    k_base = K + batch * stride_kb + head * stride_kh
    rows = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_q_rows
    row_ids = bh * num_q_rows + rows
    q = _load_rows(q_base, Q_DESC, bh * num_q_rows, tile * BLOCK_Q, num_q_rows, stride_ql,
                   BLOCK_Q, HEAD_DIM, LOADS, True)

    # pass 1: per-tile block sums to the scratch, online row max / sum for the row's lse;
    # blocks [0, clean_blocks) come in whole tiles with every slot valid, the rest masked
    row_max = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    for first_block in tl.range(0, clean_blocks, BLOCKS_PER_TILE, num_stages=STAGES):
        row_max, row_sum = _key_tile(q, k_base, K_DESC, K_VALID, SCRATCH, MAXES, row_max, row_sum, row_ids,
                                     row_ok, bh, first_block, num_k_rows, num_k_blocks, num_tiles, stride_kl,
                                     sm_scale_log2, HEAD_DIM, BLOCK_Q, K_SLOTS, BLOCKS_PER_TILE, OUT_COLS, LOADS,
                                     False, INTERPRETED)
    for first_block in tl.range(clean_blocks, num_k_blocks, BLOCKS_PER_TILE, num_stages=STAGES):
        row_max, row_sum = _key_tile(q, k_base, K_DESC, K_VALID, SCRATCH, MAXES, row_max, row_sum, row_ids,
                                     row_ok, bh, first_block, num_k_rows, num_k_blocks, num_tiles, stride_kl,
                                     sm_scale_log2, HEAD_DIM, BLOCK_Q, K_SLOTS, BLOCKS_PER_TILE, OUT_COLS, LOADS,
                                     True, INTERPRETED)

    if REDUCE == "none":  # pass 1 alone: the row log-sum-exps go where pass 2 would write scores
        tl.store(OUT + row_ids, row_max + tl.log2(row_sum), mask=row_ok)
    else:
        tl.debug_barrier()  # pass 2 reads scratch entries other threads of this program wrote
        total = _pool_query_blocks(SCRATCH, MAXES, OUT, Q_VALID, row_max + tl.log2(row_sum), bh, tile, num_q_rows,
                                   num_q_blocks, num_k_blocks, num_tiles, BLOCK_Q, Q_SLOTS, BLOCKS_PER_TILE,
                                   POOL_TILES, REDUCE == "mean")
        if NORMALIZE:
            tl.debug_barrier()
            _normalize_rows(OUT, total, bh, tile, num_q_blocks, num_k_blocks, BLOCK_Q // Q_SLOTS, CHUNK)


@kernel
def _pool_scores_kernel(SCRATCH, MAXES, LSE, OUT, Q_VALID, num_q_rows, num_q_blocks, num_k_blocks, num_tiles,
                        BLOCK_Q: tl.constexpr, Q_SLOTS: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr,
                        POOL_TILES: tl.constexpr, CHUNK: tl.constexpr, REDUCE: tl.constexpr,
                        NORMALIZE: tl.constexpr):
    """Passes 2 and 3 alone, after a separate pass 1 (the Gluon kernel) wrote scratch, maxes and lse."""
    tile = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_lse = tl.load(LSE + bh * num_q_rows + rows, mask=rows < num_q_rows, other=0.0)
    total = _pool_query_blocks(SCRATCH, MAXES, OUT, Q_VALID, row_lse, bh, tile, num_q_rows, num_q_blocks,
                               num_k_blocks, num_tiles, BLOCK_Q, Q_SLOTS, BLOCKS_PER_TILE, POOL_TILES,
                               REDUCE == "mean")
    if NORMALIZE:
        tl.debug_barrier()
        _normalize_rows(OUT, total, bh, tile, num_q_blocks, num_k_blocks, BLOCK_Q // Q_SLOTS, CHUNK)


def _descriptor(x: torch.Tensor, rows: int):
    """TMA descriptor of a contiguous [B, H, S, D] as [B*H*S, D] with (rows, D) boxes."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(x.view(-1, x.shape[-1]), [rows, x.shape[-1]])


def _operands(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """What the kernel reads: the sampled rows of x, gathered once into a contiguous copy."""
    return x.index_select(2, rows.view(-1)).contiguous()


def _as_int8(valid: torch.Tensor) -> torch.Tensor:
    """Validity as int8 for the kernel: a free view of a bool tensor."""
    return valid.view(torch.int8) if valid.dtype == torch.bool else valid


def _blocks_per_tile(tile_slots: int, slots: int) -> int:
    """Key blocks per pass-1 step: tile_slots sampled keys (at least 16, a tensor-core side)."""
    return max(1, max(16, tile_slots) // slots)


def full_key_blocks(k_valid: torch.Tensor, slots: int) -> int:
    """How many leading key blocks have every slot valid (a host sync for a CUDA k_valid)."""
    full = k_valid.reshape(-1, slots).bool().all(-1)
    return int(full.int().cumprod(0).sum())


def _launch(q, k, q_rows, q_valid, k_rows, k_valid, sm_scale, reduce, normalize, q_slots, k_slots, k_full_blocks,
            loads, block_q, tile_slots, num_warps, num_stages, chunk, scratch, max_registers, pass1,
            gluon_consumers, gluon_tile, gluon_pool, row_strides=None):
    """Shared launcher: returns the pooled scores, or for reduce "none" (scratch, maxes, row lse)."""
    if loads not in LOADS:
        raise ValueError(f"loads must be one of {LOADS}, got {loads!r}")
    if scratch not in SCRATCH_DTYPES:
        raise ValueError(f"scratch must be one of {tuple(SCRATCH_DTYPES)}, got {scratch!r}")
    if gluon_pool not in GLUON_POOL:
        raise ValueError(f"gluon_pool must be one of {GLUON_POOL}, got {gluon_pool!r}")
    if _resolve_pass1(pass1, q, k_slots) == "gluon":
        return _launch_gluon(q, k, q_rows, q_valid, k_rows, k_valid, sm_scale, reduce, normalize, q_slots, k_slots,
                             k_full_blocks, block_q, chunk, scratch, gluon_consumers, gluon_tile, gluon_pool,
                             row_strides)
    batch, heads, _, dim = q.shape
    num_q_rows, num_k_rows = q_rows.numel(), k_rows.numel()
    num_k_blocks = num_k_rows // k_slots
    block_q = max(block_q, q_slots)  # whole query blocks per program (both powers of two)
    blocks_per_tile = _blocks_per_tile(tile_slots, k_slots)
    out_cols = max(16, blocks_per_tile)
    num_tiles = cdiv(num_k_blocks, blocks_per_tile)
    clean_blocks = min(k_full_blocks, num_k_blocks) // blocks_per_tile * blocks_per_tile
    qs, ks = _operands(q, q_rows), _operands(k, k_rows)
    q_desc = _descriptor(qs, block_q) if loads == "tma" else None
    k_desc = _descriptor(ks, blocks_per_tile * k_slots) if loads == "tma" else None
    sums = torch.empty(batch, heads, num_q_rows, num_k_blocks, dtype=SCRATCH_DTYPES[scratch], device=q.device)
    maxes = torch.empty(batch, heads, num_q_rows, num_tiles, dtype=torch.float32, device=q.device)
    if reduce == "none":
        out = torch.empty(batch, heads, num_q_rows, dtype=torch.float32, device=q.device)
    else:
        out = torch.empty(batch, heads, num_q_rows // q_slots, num_k_blocks, dtype=torch.float32, device=q.device)
    if max_registers == "auto":  # two programs per SM (65536 registers), when that needs a cap
        max_registers = 65536 // (2 * 32 * num_warps) if num_warps >= 8 else None
    limits = {"maxnreg": max_registers} if max_registers and q.is_cuda else {}
    grid = (cdiv(num_q_rows, block_q), batch * heads)
    _block_scores_kernel[grid](
        qs, ks, q_desc, k_desc, q_valid, k_valid, sums, maxes, out,
        heads, qs.stride(0), qs.stride(1), qs.stride(2), ks.stride(0), ks.stride(1), ks.stride(2),
        num_q_rows, num_k_rows, num_q_rows // q_slots, num_k_blocks, clean_blocks, num_tiles,
        float(sm_scale) * LOG2_E,
        HEAD_DIM=dim, BLOCK_Q=block_q, Q_SLOTS=q_slots, K_SLOTS=k_slots, BLOCKS_PER_TILE=blocks_per_tile,
        OUT_COLS=out_cols, POOL_TILES=max(1, chunk // blocks_per_tile), CHUNK=chunk, LOADS=loads,
        REDUCE=reduce, NORMALIZE=bool(normalize), STAGES=num_stages,
        INTERPRETED=not q.is_cuda, num_warps=num_warps, **limits,
    )
    return (sums, maxes, out) if reduce == "none" else out


def _resolve_pass1(pass1: str, q: torch.Tensor, k_slots: int) -> str:
    """"triton", "gluon", or for "auto" the Gluon kernel where it runs (Hopper, 16-bit inputs)."""
    if pass1 not in PASS1:
        raise ValueError(f"pass1 must be one of {PASS1}, got {pass1!r}")
    if pass1 == "triton":
        return pass1
    from . import gluon_block_scores
    from .gluon_support import on_hopper

    fits = (on_hopper(q.device) and q.dtype in (torch.bfloat16, torch.float16)
            and k_slots <= gluon_block_scores.MAX_SLOTS and 16 <= q.shape[-1] <= 128)
    if pass1 == "gluon" and not fits:
        raise ValueError("pass1='gluon' needs Triton's Gluon, a Hopper GPU (compute capability 9.x), bf16/fp16 "
                         f"inputs, 16 <= D <= 128 and at most {gluon_block_scores.MAX_SLOTS} key slots per block")
    return "gluon" if fits else "triton"


def _rows_in_place(x: torch.Tensor, stride) -> torch.Tensor | None:
    """The sampled rows of contiguous x [B, H, L, D] as a strided view [B, H, L / step, D] (no
    copy) when the samples are evenly strided (stride = (first, step), first < step, L a multiple
    of step), else None. Padded slots past the view's rows are read from the next head or, for
    the last one, as zeros by TMA; they are masked like every padded slot."""
    if stride is None or not x.is_contiguous():
        return None
    first, step = stride
    batch, heads, length, dim = x.shape
    if first >= step or length % step:
        return None
    return x.view(batch, heads, length // step, step * dim)[..., first * dim:(first + 1) * dim]


def _launch_gluon(q, k, q_rows, q_valid, k_rows, k_valid, sm_scale, reduce, normalize, q_slots, k_slots,
                  k_full_blocks, block_q, chunk, scratch, consumers, tile, pool, row_strides=None):
    """Pass 1 by the Gluon kernel, then the pooling as its own launch: Gluon's (pool "gluon", where
    a query block's samples fit its 64-row programs) or the Triton kernel's."""
    from . import gluon_block_scores

    q_strided, k_strided = row_strides if row_strides is not None else (None, None)
    qs, ks = _rows_in_place(q, q_strided), _rows_in_place(k, k_strided)
    if qs is None or ks is None:
        qs, ks = _operands(q, q_rows), _operands(k, k_rows)
    sums, maxes, lse, blocks_per_tile = gluon_block_scores.block_sums_gluon(
        qs, ks, k_valid, k_slots, float(sm_scale) * LOG2_E, k_full_blocks, SCRATCH_DTYPES[scratch], consumers,
        tile or None, num_q_rows=q_rows.numel(), num_k_rows=k_rows.numel())
    if reduce == "none":
        return sums, maxes, lse
    if pool == "gluon" and gluon_block_scores.can_pool(q_slots):
        return gluon_block_scores.pool_scores_gluon(sums, maxes, lse, q_valid, q_slots, blocks_per_tile, reduce,
                                                    normalize)
    return pool_scores(sums, maxes, lse, q_valid, q_slots, blocks_per_tile, reduce, normalize, block_q, chunk)


def pool_scores(sums, maxes, lse, q_valid, q_slots, blocks_per_tile, reduction="max", normalize=True, block_q=128,
                chunk=64):
    """Passes 2 and 3 as their own launch: [B, H, nQ, nK] scores from a pass 1's outputs.

    sums [B, H, Sq, nK], maxes [B, H, Sq, tiles], lse [B, H, Sq] as `block_sums` returns them
    (tiles of blocks_per_tile key blocks); q_valid [Sq] int8 (or bool), q_slots rows per query block.
    """
    batch, heads, num_q_rows, num_k_blocks = sums.shape
    block_q = max(block_q, q_slots)
    out = torch.empty(batch, heads, num_q_rows // q_slots, num_k_blocks, dtype=torch.float32, device=sums.device)
    _pool_scores_kernel[(cdiv(num_q_rows, block_q), batch * heads)](
        sums, maxes, lse, out, _as_int8(q_valid), num_q_rows, num_q_rows // q_slots, num_k_blocks, maxes.shape[-1],
        BLOCK_Q=block_q, Q_SLOTS=q_slots, BLOCKS_PER_TILE=blocks_per_tile,
        POOL_TILES=max(1, chunk // blocks_per_tile), CHUNK=chunk, REDUCE=reduction, NORMALIZE=bool(normalize),
        num_warps=8,
    )
    return out


def block_scores_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rows: torch.Tensor,
    q_valid: torch.Tensor,
    k_rows: torch.Tensor,
    k_valid: torch.Tensor,
    sm_scale: float,
    reduction: str = "max",
    normalize: bool = True,
    k_full_blocks: int | None = None,
    row_strides: tuple | None = None,
    **options,
) -> torch.Tensor:
    """[B, H, nQ, nK] float32 block scores, everything after the sample tables in one kernel.

    q [B, H, Lq, D], k [B, H, Lk, D] (fp16/bf16/fp32, D a power of two >= 16); q_rows, q_valid [nQ, q_slots] and
    k_rows, k_valid [nK, k_slots]: padded sample tables (scoring.padded_samples), rows int64,
    validity int8 or bool. k_full_blocks: `full_key_blocks(k_valid)`, the leading key blocks
    whose tiles may skip masking (pass it from a cache: None computes it, a host sync on CUDA).
    `options` override DEFAULTS: loads (see module doc), block_q (sampled query rows per
    program, raised to q_slots), tile_slots (sampled keys per step), num_warps, num_stages,
    chunk (key blocks per pooling step, at least one tile), scratch ("fp32", or "fp16": half the
    scratch traffic, see `_store_tile`), max_registers (per thread, CUDA only; "auto" caps 8 warps at 128 so two
    programs share an SM and one's exponentials overlap the other's tensor-core products; None:
    the compiler's choice), pass1 ("triton": this kernel; "gluon": pass 1 by the warp-specialised
    Gluon kernel of gluon_block_scores, Hopper only, then a pooling launch (block_q, chunk and
    scratch apply to it, the other options to the Triton kernel only); "auto": Gluon where it runs),
    gluon_consumers (2, or 4: 256 sampled query rows share each key tile) and gluon_tile (sampled
    keys per Gluon step, 0: its default) for the Gluon pass 1, and gluon_pool for the pooling after
    it ("triton": the Triton kernel; "gluon": `gluon_block_scores.pool_scores_gluon`, where a query
    block has at most 64 samples). row_strides: the tables' (first, step) or None for q and for k
    (`scoring._SampleTables.stride`); where both are given the Gluon pass 1 reads the sampled rows
    in place instead of gathering them.
    """
    if reduction not in ("max", "mean"):
        raise ValueError(f"reduction must be 'max' or 'mean', got {reduction!r}")
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    cfg = {**DEFAULTS, **(CUDA_DEFAULTS if q.is_cuda else {}), **options}
    if k_full_blocks is None:
        k_full_blocks = full_key_blocks(k_valid, k_rows.shape[-1])
    return _launch(q, k, q_rows, _as_int8(q_valid), k_rows, _as_int8(k_valid), sm_scale, reduction, normalize,
                   q_rows.shape[-1], k_rows.shape[-1], k_full_blocks, row_strides=row_strides, **cfg)


def block_sums(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rows: torch.Tensor,
    k_rows: torch.Tensor,
    k_valid: torch.Tensor,
    slots: int,
    sm_scale: float,
    *,
    k_full_blocks: int | None = None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1 of the fused kernel alone, for tests and timing: (sums, maxes, row lse).

    sums [B, H, len(q_rows), nK] (scratch dtype): Σ 2^(x - m) over each key block's sampled
    keys, against m = maxes [B, H, len(q_rows), tiles] of the block's tile; row lse [B, H,
    len(q_rows)]: log2 Σ 2^x over all sampled keys (x = q·k·scale·log2e). q_rows: any query
    tokens; k_rows, k_valid: [nK * slots] padded sampled key tokens and validity; options as
    for `block_scores_triton`.
    """
    cfg = {**DEFAULTS, **options}
    if k_full_blocks is None:
        k_full_blocks = full_key_blocks(k_valid, slots)
    return _launch(q, k, q_rows, None, k_rows, _as_int8(k_valid), sm_scale, "none", False, 1, slots, k_full_blocks,
                   **cfg)


def block_logsumexp2(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rows: torch.Tensor,
    k_rows: torch.Tensor,
    k_valid: torch.Tensor,
    slots: int,
    sm_scale: float,
    **options,
) -> torch.Tensor:
    """[B, H, len(q_rows), nK] float32: log2 Σ_{sampled keys of block j} 2^(q·k·scale·log2e).

    `block_sums` turned into per-block log-sum-exps (torch ops), with the Triton pass 1 (whose
    tiles `tile_slots` sets). A block with no valid slot, or whose terms all underflow against its
    tile's max, gets -inf.
    """
    sums, maxes, _ = block_sums(q, k, q_rows, k_rows, k_valid, slots, sm_scale, **{**options, "pass1": "triton"})
    per_tile = _blocks_per_tile(options.get("tile_slots", DEFAULTS["tile_slots"]), slots)
    return maxes.repeat_interleave(per_tile, dim=-1)[..., : sums.shape[-1]] + torch.log2(sums.float())
