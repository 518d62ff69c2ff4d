"""Block scoring on the GPU: per sampled query, the log-sum-exp of its logits in each key block.

Block scores (psa_train.attention.scoring) need, for every sampled query row, the softmax mass
of every key block over the sampled keys. That mass is softmax_j(lse_j) where lse_j is the
log-sum-exp of the row's logits within key block j, so one pass over the logits is enough: this
kernel computes lse_j for all rows and blocks (exp2 domain) and never writes the Sq × Sk logits.
The softmax over blocks and the reduction over a query block's samples are cheap torch ops on
the [B, H, Sq, nK] result.

Sampled keys arrive padded: every key block owns `slots` consecutive slots (a power of two),
unused slots (a short tail block, or a fraction that does not fill a power of two) are invalid
and get -inf.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import cdiv, kernel

LOG2_E = 1.4426950408889634


@triton.jit
def _lse_by_reshape(logits, BLOCK_Q: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr, SLOTS: tl.constexpr):
    """Per-block log-sum-exp through a [rows, blocks, slots] view (exact per-block maxima)."""
    grouped = tl.reshape(logits, (BLOCK_Q, BLOCKS_PER_TILE, SLOTS))
    block_max = tl.max(grouped, axis=2)
    safe_max = tl.where(block_max == float("-inf"), 0.0, block_max)
    return safe_max + tl.log2(tl.sum(tl.exp2(grouped - safe_max[:, :, None]), axis=2))


@triton.jit
def _lse_by_dot(logits, BLOCK_Q: tl.constexpr, TILE: tl.constexpr, SLOTS: tl.constexpr, OUT_COLS: tl.constexpr,
                INTERPRETED: tl.constexpr):
    """Per-block log-sum-exp with one exp per logit and the segmented sum as a matrix product.

    Exponentials are taken against the tile's row maximum; a block whose terms all underflow
    from there holds under ~2^-126 of the row's mass and gets -inf (a zero score). The sum runs
    in bf16 (the exponent range of fp32; ~0.4 % rounding per term).
    """
    row_max = tl.max(logits, axis=1)
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    weights = tl.exp2(logits - safe_max[:, None])
    cols = tl.arange(0, TILE)
    owner = tl.arange(0, OUT_COLS)
    indicator = ((cols[:, None] // SLOTS) == owner[None, :]).to(tl.float32)
    if INTERPRETED:
        sums = tl.dot(weights, indicator, input_precision="ieee")
    else:
        sums = tl.dot(weights.to(tl.bfloat16), indicator.to(tl.bfloat16))
    return safe_max[:, None] + tl.log2(sums)


@kernel
def _block_lse_kernel(
    Q, K, Q_ROWS, K_ROWS, K_VALID, OUT,
    Lq, Lk, num_q_rows, num_k_blocks, sm_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, SLOTS: tl.constexpr, BLOCKS_PER_TILE: tl.constexpr,
    SEGMENT_SUM: tl.constexpr, OUT_COLS: tl.constexpr, INTERPRETED: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    rows = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < num_q_rows
    q_tokens = tl.load(Q_ROWS + rows, mask=row_ok, other=0)
    q = tl.load(Q + bh * Lq * HEAD_DIM + q_tokens[:, None] * HEAD_DIM + d[None, :], mask=row_ok[:, None], other=0.0)

    num_slots = num_k_blocks * SLOTS
    for first_block in range(0, num_k_blocks, BLOCKS_PER_TILE):
        cols = first_block * SLOTS + tl.arange(0, BLOCKS_PER_TILE * SLOTS)
        col_ok = cols < num_slots
        valid = tl.load(K_VALID + cols, mask=col_ok, other=0) != 0
        k_tokens = tl.load(K_ROWS + cols, mask=col_ok, other=0)
        k = tl.load(K + bh * Lk * HEAD_DIM + k_tokens[:, None] * HEAD_DIM + d[None, :], mask=valid[:, None], other=0.0)
        if INTERPRETED:  # the interpreter's half-precision tl.dot is wrong (triton 3.8): use fp32
            logits = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        else:
            logits = tl.dot(q, tl.trans(k))
        logits = logits * sm_scale_log2
        logits = tl.where(valid[None, :], logits, float("-inf"))
        if SEGMENT_SUM == "dot":
            lse = _lse_by_dot(logits, BLOCK_Q, BLOCKS_PER_TILE * SLOTS, SLOTS, OUT_COLS, INTERPRETED)
            blocks = first_block + tl.arange(0, OUT_COLS)
            in_tile = tl.arange(0, OUT_COLS) < BLOCKS_PER_TILE
        else:
            lse = _lse_by_reshape(logits, BLOCK_Q, BLOCKS_PER_TILE, SLOTS)
            blocks = first_block + tl.arange(0, BLOCKS_PER_TILE)
            in_tile = tl.arange(0, BLOCKS_PER_TILE) < BLOCKS_PER_TILE
        out_ptr = OUT + bh * num_q_rows * num_k_blocks + rows[:, None] * num_k_blocks + blocks[None, :]
        tl.store(out_ptr, lse, mask=row_ok[:, None] & (in_tile & (blocks < num_k_blocks))[None, :])


def block_logsumexp2(
    q: torch.Tensor,
    k: torch.Tensor,
    q_rows: torch.Tensor,
    k_rows: torch.Tensor,
    k_valid: torch.Tensor,
    slots: int,
    sm_scale: float,
    block_q: int = 128,
    num_warps: int = 8,
    tile_slots: int = 128,
    segment_sum: str = "dot",
) -> torch.Tensor:
    """[B, H, len(q_rows), nK] float32: log2 Σ_{sampled keys of block j} 2^(q·k·scale·log2e).

    q [B, H, Lq, D], k [B, H, Lk, D] contiguous (fp16/bf16/fp32, D in {64, 128}); q_rows: the
    sampled query tokens; k_rows, k_valid: [nK * slots] padded sampled key tokens and validity.
    A block with no valid slot gets -inf. Defaults: the fastest variant timed on an H200
    (benchmarks/kernel_bench.py --scoring-only, 18:34 UTC 2026-11-28; B=1, H=12, L=32760, D=128:
    0.88 ms at block_n 64, 0.92 ms at block_n 32, against 0.96 / 1.26 ms for the reshape sum).
    """
    batch, heads, length_q, dim = q.shape
    num_k_blocks = k_rows.numel() // slots
    if segment_sum not in ("reshape", "dot"):
        raise ValueError(f"segment_sum must be 'reshape' or 'dot', got {segment_sum!r}")
    blocks_per_tile = max(1, tile_slots // slots)
    out = torch.empty(batch, heads, q_rows.numel(), num_k_blocks, dtype=torch.float32, device=q.device)
    grid = (cdiv(q_rows.numel(), block_q), batch * heads)
    _block_lse_kernel[grid](
        q, k, q_rows, k_rows, k_valid.to(torch.int8), out,
        length_q, k.shape[2], q_rows.numel(), num_k_blocks, float(sm_scale) * LOG2_E,
        HEAD_DIM=dim, BLOCK_Q=block_q, SLOTS=slots, BLOCKS_PER_TILE=blocks_per_tile,
        SEGMENT_SUM=segment_sum, OUT_COLS=max(16, blocks_per_tile), INTERPRETED=not q.is_cuda, num_warps=num_warps,
    )
    return out
