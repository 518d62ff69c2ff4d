"""Pass 1 of block scoring for Hopper GPUs, written in Gluon with warp specialisation.

Why a second version of `triton_block_scores`' pass 1: that loop (sampled QKᵀ, one exponential
per logit, block sums by an indicator product) ran at ~300 TFLOP/s on an H200, under half the
device's matrix rate, and Triton 3.6 can neither keep a product in flight across iterations nor
split the loop into producer and consumer warps (benchmarks/NOTES.md, fifth session). Gluon states
the schedule explicitly, as FlashAttention 3 does (measured: pass 1 about 14-19 % faster; what
still limits it is not known):

  * one producer warp streams the sampled key tiles into a ring of shared-memory buffers by TMA
    (mbarriers say when a buffer is full and when both consumers are done with it);
  * two or four consumer warpgroups own 64 sampled query rows each; while one computes its
    exponentials another's product runs on the tensor cores. Four (the default, with 128-key
    steps) halve the key traffic per product: pass 1 + pooling 0.637 -> 0.586-0.591 ms at the Wan
    shape, block_n 64 (0.759-0.765 -> 0.697-0.705 at 32; H200, NOTES.md eighth session).

Output contract as `triton_block_scores.block_sums`: per (row, key block) sums of 2^(x - m_t)
against the tile's row max m_t (scratch dtype), the maxes [rows, tiles], and each row's base-2
log-sum-exp. The pooling pass (`pool_scores_gluon` below, or `triton_block_scores.pool_scores`) turns
them into scores.
CUDA only, compute capability 9.x; everything else takes the Triton kernel (which CI tests on CPU).
"""

from __future__ import annotations

import torch

from .gluon_support import HAVE_GLUON
from .triton_launch import cdiv

if HAVE_GLUON:
    from .gluon_support import (
        descriptor,
        fence_async_shared,
        gl,
        gluon,
        mbarrier,
        ring_barriers,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
        wgmma_layout,
    )

ROWS = 64  # query rows per consumer warpgroup (128 measured slower on an H200)
MAX_SLOTS = 256  # key slots per block at most: one step holds whole blocks, a TMA box side is <= 256
SHARED_BYTES = 220 * 1024  # of sm_90's 227 KiB per block, leaving room for barriers


if HAVE_GLUON:

    @gluon.jit
    def _load_tiles(q_desc, k_desc, q_smem, k_bufs, q_ready, k_ready, k_empty, q_row, k_row, num_tiles,
                    STAGES: gl.constexpr):
        """Producer: the query tile once, then key tile t into buffer t % STAGES when it is free."""
        mbarrier.expect(q_ready, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_ready, q_smem)
        for t in range(num_tiles):
            stage = t % STAGES
            mbarrier.wait(k_empty.index(stage), ((t // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [k_row + t * k_desc.block_type.shape[0], 0],
                                            k_ready.index(stage), k_bufs.index(stage))

    @gluon.jit
    def _tile_weights(raw, t, clean_tiles, K_VALID, num_k_rows, scale, TILE_K: gl.constexpr,
                      s_layout: gl.constexpr, p_layout: gl.constexpr, rows_o: gl.constexpr):
        """2^(x - m) of one tile's logits as the bf16 operand of the block-sum product, and m per row.

        Tail tiles (t >= clean_tiles) mask invalid sampled slots and slots past the head's end.
        """
        if t >= clean_tiles:
            cols = t * TILE_K + gl.arange(0, TILE_K, layout=gl.SliceLayout(0, s_layout))
            valid = gl.load(K_VALID + cols, mask=cols < num_k_rows, other=0) != 0
            raw = raw + gl.where(valid, 0.0, float("-inf"))[None, :]
        tile_max = gl.max(raw, axis=1)
        tile_max = gl.where(tile_max == float("-inf"), 0.0, tile_max) * scale
        weights = gl.exp2(raw * scale - tile_max[:, None])
        return gl.convert_layout(weights.to(gl.bfloat16), p_layout), gl.convert_layout(tile_max, rows_o)

    @gluon.jit
    def _record_tile(sums, tile_max, row_max, row_sum, t, SCRATCH, MAXES, row_ids, row_ok, slot, num_k_blocks,
                     num_tiles, BLOCKS_PER_TILE: gl.constexpr):
        """Store one tile's block sums and row max; return the running row max and sum (for the lse)."""
        blocks = t * BLOCKS_PER_TILE + slot
        keep = (slot < BLOCKS_PER_TILE) & (blocks < num_k_blocks)
        gl.store(SCRATCH + row_ids[:, None] * num_k_blocks + blocks[None, :],
                 sums.to(SCRATCH.dtype.element_ty), mask=row_ok[:, None] & keep[None, :])
        gl.store(MAXES + row_ids * num_tiles + t, tile_max, mask=row_ok)
        new_max = gl.maximum(row_max, tile_max)
        row_sum = row_sum * gl.exp2(row_max - new_max) + gl.sum(sums, axis=1) * gl.exp2(tile_max - new_max)
        return new_max, row_sum

    @gluon.jit
    def _pool_kernel(SCRATCH, MAXES, LSE, Q_VALID, OUT, num_q_rows, num_k_blocks, num_tiles,
                     ROWS: gl.constexpr, Q_SLOTS: gl.constexpr, BLOCKS_PER_TILE: gl.constexpr, VEC: gl.constexpr,
                     GROUP_WARPS: gl.constexpr, SLOT_LANES: gl.constexpr, MEAN: gl.constexpr,
                     NORMALIZE: gl.constexpr):
        """Pooling and normalisation (passes 2 and 3 of `triton_block_scores`) after pass 1 (scratch,
        maxes and lse in memory): ROWS sampled rows of one head per 4-warp program.

        A query block's sampled rows are spread over SLOT_LANES lanes (the rest in registers) for VEC
        neighbouring key blocks, so the max (or mean) over them is mostly register work; the factor
        2^(m_rt - LSE_r) is one exponential per row and key tile (VEC divides the blocks per tile).
        """
        bh = gl.program_id(1).to(gl.int64)
        first = gl.program_id(0) * ROWS
        GROUPS: gl.constexpr = ROWS // Q_SLOTS
        VECS: gl.constexpr = (32 // SLOT_LANES) * (4 // GROUP_WARPS)  # column vectors per step
        CHUNK: gl.constexpr = VECS * VEC
        grid4: gl.constexpr = gl.BlockedLayout([GROUPS // GROUP_WARPS, Q_SLOTS // SLOT_LANES, 1, VEC],
                                               [1, SLOT_LANES, 32 // SLOT_LANES, 1],
                                               [GROUP_WARPS, 1, 4 // GROUP_WARPS, 1], [3, 2, 1, 0])
        grid3: gl.constexpr = gl.SliceLayout(3, grid4)  # [groups, slots, vectors]
        rows2: gl.constexpr = gl.SliceLayout(2, grid3)  # [groups, slots]
        pooled3: gl.constexpr = gl.SliceLayout(1, grid4)  # [groups, vectors, VEC]
        per_group: gl.constexpr = gl.SliceLayout(1, gl.SliceLayout(2, pooled3))  # [groups]

        g = gl.arange(0, GROUPS, layout=gl.SliceLayout(1, rows2))
        s = gl.arange(0, Q_SLOTS, layout=gl.SliceLayout(0, rows2))
        row = first + gl.expand_dims(g, 1) * Q_SLOTS + gl.expand_dims(s, 0)
        row_ok = row < num_q_rows
        sampled = row_ok & (gl.load(Q_VALID + row, mask=row_ok, other=0) != 0)
        row_ids = bh * num_q_rows + row
        lse = gl.load(LSE + row_ids, mask=sampled, other=0.0)
        vec3 = gl.expand_dims(gl.expand_dims(gl.arange(0, VECS, layout=gl.SliceLayout(0, gl.SliceLayout(0, grid3))),
                                             0), 0) * VEC  # [1, 1, VECS]
        lane = gl.arange(0, VEC, layout=gl.SliceLayout(0, gl.SliceLayout(0, pooled3)))
        lane4 = gl.arange(0, VEC, layout=gl.SliceLayout(0, gl.SliceLayout(0, gl.SliceLayout(0, grid4))))
        lane4 = gl.expand_dims(gl.expand_dims(gl.expand_dims(lane4, 0), 0), 0)  # [1, 1, 1, VEC]
        vec_p = gl.expand_dims(gl.expand_dims(gl.arange(0, VECS, layout=gl.SliceLayout(0, gl.SliceLayout(2, pooled3))),
                                              0), 2) * VEC + gl.expand_dims(gl.expand_dims(lane, 0), 0)
        group = first // Q_SLOTS + gl.arange(0, GROUPS, layout=gl.SliceLayout(1, gl.SliceLayout(2, pooled3)))
        group_ok = gl.expand_dims(gl.expand_dims(group * Q_SLOTS < num_q_rows, 1), 2)
        out_rows = OUT + gl.expand_dims(gl.expand_dims(bh * (num_q_rows // Q_SLOTS) + group, 1), 2) * num_k_blocks
        keep3 = gl.expand_dims(sampled, 2)
        if MEAN:
            count = gl.convert_layout(gl.maximum(gl.sum(sampled.to(gl.float32), axis=1), 1.0), per_group)
        partial = gl.zeros([GROUPS, VECS], gl.float32, layout=gl.SliceLayout(2, pooled3))  # row sums per thread
        for c0 in range(0, num_k_blocks, CHUNK):
            cols = c0 + vec3  # first key block of each vector
            ok3 = keep3 & (cols < num_k_blocks)
            maxes = gl.load(MAXES + gl.expand_dims(row_ids, 2) * num_tiles + cols // BLOCKS_PER_TILE, mask=ok3,
                            other=float("-inf"))
            factor = gl.expand_dims(gl.exp2(maxes - gl.expand_dims(lse, 2)), 3)  # 0 where not sampled
            ok4 = gl.expand_dims(ok3, 3) & (gl.expand_dims(cols, 3) + lane4 < num_k_blocks)
            sums = gl.load(SCRATCH + gl.expand_dims(gl.expand_dims(row_ids, 2), 3) * num_k_blocks
                           + gl.expand_dims(cols, 3) + lane4, mask=ok4, other=0.0)
            mass = sums.to(gl.float32) * factor
            if MEAN:
                pooled = gl.sum(mass, axis=1) / gl.expand_dims(gl.expand_dims(count, 1), 2)
            else:
                pooled = gl.max(mass, axis=1)
            partial += gl.sum(pooled, axis=2)
            gl.store(out_rows + c0 + vec_p, pooled, mask=group_ok & (c0 + vec_p < num_k_blocks))
        if NORMALIZE:  # each thread rescales the scores it stored itself: no barrier needed
            total = gl.sum(partial, axis=1)
            inv = gl.expand_dims(gl.expand_dims(1.0 / gl.maximum(total, 1.1754943508222875e-38), 1), 2)
            for c0 in range(0, num_k_blocks, CHUNK):
                mask = group_ok & (c0 + vec_p < num_k_blocks)
                gl.store(out_rows + c0 + vec_p, gl.load(out_rows + c0 + vec_p, mask=mask, other=0.0) * inv,
                         mask=mask)

    @gluon.jit
    def _score_rows(q_smem, k_bufs, ind_smem, q_ready, k_ready, k_empty, K_VALID, SCRATCH, MAXES, LSE,
                    bh, first_row, num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                    CONSUMER: gl.constexpr, ROWS: gl.constexpr, TILE_K: gl.constexpr,
                    BLOCKS_PER_TILE: gl.constexpr, OUT_COLS: gl.constexpr, STAGES: gl.constexpr):
        """Consumer: ROWS query rows against every key tile; block sums, tile maxes, row lse to memory."""
        s_layout: gl.constexpr = wgmma_layout(TILE_K)
        o_layout: gl.constexpr = wgmma_layout(OUT_COLS)
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        rows_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        rows = first_row + CONSUMER * ROWS + gl.arange(0, ROWS, layout=rows_o)
        row_ok = rows < num_q_rows
        row_ids = bh * num_q_rows + rows
        slot = gl.arange(0, OUT_COLS, layout=gl.SliceLayout(0, o_layout))
        q = q_smem.slice(CONSUMER * ROWS, ROWS, dim=0)
        row_max = gl.full([ROWS], float("-inf"), gl.float32, layout=rows_o)
        row_sum = gl.zeros([ROWS], gl.float32, layout=rows_o)
        mbarrier.wait(q_ready, 0)
        for t in range(num_tiles):
            stage = t % STAGES
            mbarrier.wait(k_ready.index(stage), (t // STAGES) & 1)
            logits = warpgroup_mma(q, k_bufs.index(stage).permute((1, 0)),
                                   gl.zeros([ROWS, TILE_K], gl.float32, layout=s_layout), use_acc=False, is_async=True)
            raw = warpgroup_mma_wait(num_outstanding=0, deps=(logits,))
            mbarrier.arrive(k_empty.index(stage), count=1)
            p, tile_max = _tile_weights(raw, t, clean_tiles, K_VALID, num_k_rows, scale, TILE_K, s_layout,
                                        p_layout, rows_o)
            sums = warpgroup_mma(p, ind_smem, gl.zeros([ROWS, OUT_COLS], gl.float32, layout=o_layout), use_acc=False)
            row_max, row_sum = _record_tile(sums, tile_max, row_max, row_sum, t, SCRATCH, MAXES, row_ids, row_ok,
                                            slot, num_k_blocks, num_tiles, BLOCKS_PER_TILE)
        gl.store(LSE + row_ids, row_max + gl.log2(row_sum), mask=row_ok)

    @gluon.jit
    def _block_sums_kernel(q_desc, k_desc, K_VALID, SCRATCH, MAXES, LSE, q_head_rows, k_head_rows,
                           num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                           K_SLOTS: gl.constexpr, OUT_COLS: gl.constexpr, STAGES: gl.constexpr,
                           NUM_WARPS: gl.constexpr, CONSUMERS: gl.constexpr = 2, CONSUMER_REGS: gl.constexpr = 232):
        ROWS: gl.constexpr = q_desc.block_type.shape[0] // CONSUMERS
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        TILE_K: gl.constexpr = k_desc.block_type.shape[0]
        BLOCKS_PER_TILE: gl.constexpr = TILE_K // K_SLOTS
        dtype: gl.constexpr = q_desc.dtype
        tile = gl.program_id(0)
        bh = gl.program_id(1).to(gl.int64)
        first_row = tile * (CONSUMERS * ROWS)

        q_smem = gl.allocate_shared_memory(dtype, q_desc.block_type.shape, q_desc.layout)
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, TILE_K, HEAD_DIM], k_desc.layout)
        # block sums as a product with a 0/1 matrix: column j of a tile belongs to block j // K_SLOTS
        ind_regs: gl.constexpr = gl.BlockedLayout([1, OUT_COLS], [32, 1], [NUM_WARPS, 1], [1, 0])
        key = gl.arange(0, TILE_K, layout=gl.SliceLayout(1, ind_regs))
        owner = gl.arange(0, OUT_COLS, layout=gl.SliceLayout(0, ind_regs))
        indicator = ((key[:, None] // K_SLOTS) == owner[None, :]).to(gl.bfloat16)  # weights go bf16 too
        ind_smem = gl.allocate_shared_memory(gl.bfloat16, [TILE_K, OUT_COLS],
                                             gl.NVMMASharedLayout.get_default_for([TILE_K, OUT_COLS], gl.bfloat16),
                                             indicator)
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(q_ready, count=1)
        k_ready, k_empty = ring_barriers(STAGES, CONSUMERS)  # one arrive per consumer
        fence_async_shared()

        q_row = (bh * q_head_rows + first_row).to(gl.int32)  # a head's rows in memory (no more than
        k_row = (bh * k_head_rows).to(gl.int32)  # its num_*_rows sampled slots when read in place)
        if CONSUMERS == 2:
            gl.warp_specialize(
                [(_load_tiles, (q_desc, k_desc, q_smem, k_bufs, q_ready, k_ready, k_empty, q_row, k_row, num_tiles,
                                STAGES)),
                 (_score_rows, (q_smem, k_bufs, ind_smem, q_ready, k_ready, k_empty, K_VALID, SCRATCH, MAXES, LSE,
                                bh, first_row, num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                                0, ROWS, TILE_K, BLOCKS_PER_TILE, OUT_COLS, STAGES)),
                 (_score_rows, (q_smem, k_bufs, ind_smem, q_ready, k_ready, k_empty, K_VALID, SCRATCH, MAXES, LSE,
                                bh, first_row, num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                                1, ROWS, TILE_K, BLOCKS_PER_TILE, OUT_COLS, STAGES))],
                [4, 4], [CONSUMER_REGS, CONSUMER_REGS])
        else:  # four consumers share every key tile: half the key traffic per product
            gl.warp_specialize(
                [(_load_tiles, (q_desc, k_desc, q_smem, k_bufs, q_ready, k_ready, k_empty, q_row, k_row, num_tiles,
                                STAGES)),
                 (_score_rows, (q_smem, k_bufs, ind_smem, q_ready, k_ready, k_empty, K_VALID, SCRATCH, MAXES, LSE,
                                bh, first_row, num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                                0, ROWS, TILE_K, BLOCKS_PER_TILE, OUT_COLS, STAGES)),
                 (_score_rows, (q_smem, k_bufs, ind_smem, q_ready, k_ready, k_empty, K_VALID, SCRATCH, MAXES, LSE,
                                bh, first_row, num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                                1, ROWS, TILE_K, BLOCKS_PER_TILE, OUT_COLS, STAGES)),
                 (_score_rows, (q_smem, k_bufs, ind_smem, q_ready, k_ready, k_empty, K_VALID, SCRATCH, MAXES, LSE,
                                bh, first_row, num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                                2, ROWS, TILE_K, BLOCKS_PER_TILE, OUT_COLS, STAGES)),
                 (_score_rows, (q_smem, k_bufs, ind_smem, q_ready, k_ready, k_empty, K_VALID, SCRATCH, MAXES, LSE,
                                bh, first_row, num_q_rows, num_k_rows, num_k_blocks, num_tiles, clean_tiles, scale,
                                3, ROWS, TILE_K, BLOCKS_PER_TILE, OUT_COLS, STAGES))],
                [4, 4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS, CONSUMER_REGS])


def step_keys(k_slots: int) -> int:
    """Sampled keys per step: 256 where key blocks hold 16+ samples, else 128 (H200, BENCHMARKS.md).

    Longer steps mean fewer, larger products per exponential pass; at 8 slots per block a 256-key
    step makes 32 blocks per tile, and the pooling pass over such tiles was slower than the gain.
    """
    return max(k_slots, 256 if k_slots >= 16 else 128)


def ring_stages(tile: int, dim: int, out_cols: int, consumers: int = 2) -> int:
    """Key tiles in flight: three where shared memory holds them next to the query tile, else two."""
    fixed = (consumers * ROWS * dim + tile * out_cols) * 2
    return 3 if fixed + 3 * tile * dim * 2 <= SHARED_BYTES else 2


def block_sums_gluon(qs: torch.Tensor, ks: torch.Tensor, k_valid: torch.Tensor, k_slots: int, scale_log2: float,
                     clean_blocks: int, scratch_dtype: torch.dtype, consumers: int, tile: int | None,
                     consumer_regs: int | None = None, num_q_rows: int | None = None,
                     num_k_rows: int | None = None):
    """Pass 1 on the sampled rows qs [B, H, Sq, D], ks [B, H, Sk, D] (bf16/fp16; gathered copies, or
    the strided views described below).

    Returns (sums [B, H, Sq, nK] in scratch_dtype, maxes [B, H, Sq, tiles] fp32, lse [B, H, Sq]
    fp32, blocks per tile) with the meaning of `triton_block_scores.block_sums`. clean_blocks:
    leading key blocks whose tiles need no validity mask. consumers 2 or 4 (warpgroups of 64
    rows), tile the sampled keys per step (None: `step_keys`), consumer_regs per thread (None:
    232 for two consumers, 112 for four). qs, ks may also be strided views of the sampled rows in
    place (`triton_block_scores._rows_in_place`), with fewer rows per head than the tables'
    num_q_rows / num_k_rows padded slots (default: the operands' row counts).
    """
    if consumers not in (2, 4):
        raise ValueError(f"consumers must be 2 or 4, got {consumers}")
    consumer_regs = consumer_regs or (232 if consumers == 2 else 112)
    batch, heads, q_head_rows, dim = qs.shape
    k_head_rows = ks.shape[2]
    num_q_rows = num_q_rows or q_head_rows
    num_k_rows = num_k_rows or k_head_rows
    num_k_blocks = num_k_rows // k_slots
    tile = max(tile, k_slots) if tile else step_keys(k_slots)  # a step holds whole key blocks
    blocks_per_tile = tile // k_slots
    num_tiles = cdiv(num_k_blocks, blocks_per_tile)
    out_cols = max(16, blocks_per_tile)
    q_desc, k_desc = descriptor(qs, consumers * ROWS), descriptor(ks, tile)
    sums = torch.empty(batch, heads, num_q_rows, num_k_blocks, dtype=scratch_dtype, device=qs.device)
    maxes = torch.empty(batch, heads, num_q_rows, num_tiles, dtype=torch.float32, device=qs.device)
    lse = torch.empty(batch, heads, num_q_rows, dtype=torch.float32, device=qs.device)
    grid = (cdiv(num_q_rows, consumers * ROWS), batch * heads)
    _block_sums_kernel[grid](q_desc, k_desc, k_valid, sums, maxes, lse, q_head_rows, k_head_rows,
                             num_q_rows, num_k_rows, num_k_blocks, num_tiles,
                             min(clean_blocks, num_k_blocks) // blocks_per_tile, scale_log2,
                             K_SLOTS=k_slots, OUT_COLS=out_cols, STAGES=ring_stages(tile, dim, out_cols, consumers),
                             NUM_WARPS=4, CONSUMERS=consumers, CONSUMER_REGS=consumer_regs, num_warps=4)
    return sums, maxes, lse, blocks_per_tile


def can_pool(q_slots: int) -> bool:
    """Whether `pool_scores_gluon` can pool query blocks of q_slots sampled rows: a program's 64
    rows must hold whole query blocks."""
    return q_slots <= ROWS and ROWS % q_slots == 0


# At most (sampled rows of a query block, rows x key blocks) per thread and step of the pooling: the
# fastest of (8, 64), (8, 32), (4, 32), (8, 16) on an H200 at the Wan shape (BENCHMARKS.md, 2026-11-29).
POOL_SHAPE = (8, 32)


def _pool_shape(q_slots: int, blocks_per_tile: int, shape: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(key blocks per vector, warps across query blocks, lanes across a query block's rows) of
    `_pool_kernel`'s layout for shape = (rows, values) per thread at most (None: POOL_SHAPE); a
    vector of at most 8 blocks (16 bytes of fp16 sums) never spans two key tiles."""
    rows_cap, values_cap = shape or POOL_SHAPE
    groups = ROWS // q_slots
    group_warps = min(groups, 4)
    slot_lanes = max(1, q_slots // rows_cap)
    rows_per_thread = groups // group_warps * q_slots // slot_lanes
    return min(blocks_per_tile, 8, max(1, values_cap // rows_per_thread)), group_warps, slot_lanes


def pool_scores_gluon(sums: torch.Tensor, maxes: torch.Tensor, lse: torch.Tensor, q_valid: torch.Tensor, q_slots: int,
                      blocks_per_tile: int, reduction: str = "max", normalize: bool = True) -> torch.Tensor:
    """`triton_block_scores.pool_scores` as a Gluon launch (same arguments and result): one 4-warp
    program per 64 sampled rows, each query block's rows in a few lanes (`_pool_kernel`), where
    the Triton kernel's max across lanes waited on the shared-memory pipe (Nsight Compute: 35 % of
    its stalls; 0.089 -> 0.052 ms at the Wan shape, H200, BENCHMARKS.md). q_slots: `can_pool`."""
    if not can_pool(q_slots):
        raise ValueError(f"the Gluon pooling needs q_slots dividing {ROWS}, got {q_slots}")
    batch, heads, num_q_rows, num_k_blocks = sums.shape
    vec, group_warps, slot_lanes = _pool_shape(q_slots, blocks_per_tile)
    out = torch.empty(batch, heads, num_q_rows // q_slots, num_k_blocks, dtype=torch.float32, device=sums.device)
    _pool_kernel[(cdiv(num_q_rows, ROWS), batch * heads)](
        sums, maxes, lse, q_valid.view(torch.int8), out, num_q_rows, num_k_blocks, maxes.shape[-1],
        ROWS=ROWS, Q_SLOTS=q_slots, BLOCKS_PER_TILE=blocks_per_tile, VEC=vec, GROUP_WARPS=group_warps,
        SLOT_LANES=slot_lanes, MEAN=reduction == "mean", NORMALIZE=bool(normalize), num_warps=4)
    return out
