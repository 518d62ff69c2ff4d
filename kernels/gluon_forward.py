"""Pyramid attention forward for Hopper GPUs, in Gluon (KernelConfig.fwd_gluon).

The work of `triton_forward._pyramid_fwd_kernel` with the backward kernels' structure
(gluon_backward): per query block of 128 rows, a producer warpgroup loads Q once and streams key
tiles of `tile` rows into a ring of shared-memory buffers by TMA, level after level; two consumer
warpgroups own 64 query rows each, share every tile and keep the online softmax in registers.
Each consumer computes tile t's softmax while tile t-1's P V product runs; with `pingpong` the two
take turns issuing products (FlashAttention 3's schedule). Measured on an H200 (Wan shape, density
0.15, benchmarks/NOTES.md sixth session): forward kernel 2.14 ms (Triton) -> 2.08 ms at 4 stages
with turns; the consumers' instruction issue, not the loads, is what bounds it.

A tile packs whole pieces of entries of one level: a level-s key block is R = block_n / s
contiguous pooled rows, loaded as one TMA box of min(R, tile) rows into its slice of the tile
(eight 8-row level-8 blocks of block_n 64 fill a 64-row tile). Tiles of whole pooled rows take
the bias-free step (one fused multiply-add per logit, the constant log2(s)); a level's last tile
(list padding: the last entry is loaded again and masked) and a head's partial last key block
take per-column validity and log2(n) bias, as the Triton kernel does.

CUDA only (compute capability 9.x), 16-bit inputs, D in {64, 128}, block_m 128, block_n a
multiple of 64 (level-8 boxes of at least 8 rows, the swizzle period), sm_scale > 0.
"""

from __future__ import annotations

import torch

from .gluon_support import HAVE_GLUON, on_hopper
from .triton_forward import LOG2E

if HAVE_GLUON:
    from .gluon_support import (
        barriers,
        descriptor,
        fence_async_shared,
        gl,
        gluon,
        mbarrier,
        query_block,
        ring_barriers,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
        wgmma_layout,
    )

ROWS_PER_CONSUMER = 64  # one warpgroup's product height


def supported(q: torch.Tensor, block_m: int, block_n: int, sm_scale: float) -> bool:
    """Whether the Gluon forward runs for these inputs (else the Triton kernel does)."""
    return (on_hopper(q.device) and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] in (64, 128)
            and block_m == 2 * ROWS_PER_CONSUMER and block_n % 64 == 0 and sm_scale > 0)


def box_rows(block_n: int, tile: int, s: int) -> int:
    """Rows per TMA box of level s: a key block is block_n / s pooled rows, loaded in boxes of at
    most `tile` rows."""
    return min(block_n // s, tile)


if HAVE_GLUON:

    @gluon.jit
    def _level_tiles(cnt, BOXES: gl.constexpr, PER_ENTRY: gl.constexpr):
        """Tiles of a level with cnt entries (the last one padded)."""
        return (cnt * PER_ENTRY + BOXES - 1) // BOXES

    @gluon.jit
    def _tile_rows(lst, cnt, t, row0, BOXES: gl.constexpr, PER_ENTRY: gl.constexpr, R: gl.constexpr,
                   BOX: gl.constexpr):
        """First rows of tile t's boxes, every thread holding all of them (one vector load of list
        entries; padding boxes repeat the last entry, which the consumers mask)."""
        layout: gl.constexpr = gl.BlockedLayout([BOXES], [32], [gl.num_warps()], [0])
        g = t * BOXES + gl.arange(0, BOXES, layout=layout)
        entry = gl.minimum(g // PER_ENTRY, gl.maximum(cnt - 1, 0))
        return row0 + gl.load(lst + entry) * R + (g % PER_ENTRY) * BOX

    @gluon.jit
    def _load_level(k_desc, v_desc, k_bufs, v_bufs, k_ready, v_ready, empty, lst, cnt, it, row0,
                    BLOCK_N: gl.constexpr, S: gl.constexpr, STAGES: gl.constexpr):
        """Producer: the tiles of one level, box by box into the ring (K and V on their own barriers,
        so a tile's first product can start before its V lands); returns the step counter. The next
        tile's list entries load while the producer waits for a free slot."""
        BOX: gl.constexpr = k_desc.block_type.shape[0]
        BOXES: gl.constexpr = k_bufs.shape[1] // BOX
        R: gl.constexpr = BLOCK_N // S
        PER_ENTRY: gl.constexpr = R // BOX
        box_ids = gl.arange(0, BOXES, layout=gl.BlockedLayout([BOXES], [32], [gl.num_warps()], [0]))
        rows = _tile_rows(lst, cnt, 0, row0, BOXES, PER_ENTRY, R, BOX)
        for t in range(_level_tiles(cnt, BOXES, PER_ENTRY)):
            slot = it % STAGES
            mbarrier.wait(empty.index(slot), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            mbarrier.expect(k_ready.index(slot), BOXES * k_desc.block_type.nbytes)
            mbarrier.expect(v_ready.index(slot), BOXES * v_desc.block_type.nbytes)
            for u in gl.static_range(BOXES):
                row = gl.sum(gl.where(box_ids == u, rows, 0), 0).to(gl.int32)
                tma.async_copy_global_to_shared(k_desc, [row, 0], k_ready.index(slot),
                                                k_bufs.index(slot).slice(u * BOX, BOX))
            for u in gl.static_range(BOXES):
                row = gl.sum(gl.where(box_ids == u, rows, 0), 0).to(gl.int32)
                tma.async_copy_global_to_shared(v_desc, [row, 0], v_ready.index(slot),
                                                v_bufs.index(slot).slice(u * BOX, BOX))
            rows = _tile_rows(lst, cnt, t + 1, row0, BOXES, PER_ENTRY, R, BOX)
            it += 1
        return it

    @gluon.jit
    def _fwd_loader(q_desc, k1, v1, k2, v2, k4, v4, k8, v8, q_smem, k_bufs, v_bufs, q_ready, k_ready, v_ready,
                    empty, lst, c1, c2, c4, c8, bh, i, Lq, Lk, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                    STAGES: gl.constexpr):
        """Producer: Q once, then the key tiles of levels 1, 2, 4, 8 in turn (one step counter
        across levels, so the ring's slots and phases run on)."""
        mbarrier.expect(q_ready, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [(bh * Lq + i * BLOCK_M).to(gl.int32), 0], q_ready, q_smem)
        it = 0
        it = _load_level(k1, v1, k_bufs, v_bufs, k_ready, v_ready, empty, lst, c1, it, bh * Lk, BLOCK_N, 1, STAGES)
        it = _load_level(k2, v2, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1, c2, it, bh * ((Lk + 1) // 2),
                         BLOCK_N, 2, STAGES)
        it = _load_level(k4, v4, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1 + c2, c4, it, bh * ((Lk + 3) // 4),
                         BLOCK_N, 4, STAGES)
        _load_level(k8, v8, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1 + c2 + c4, c8, it, bh * ((Lk + 7) // 8),
                    BLOCK_N, 8, STAGES)

    @gluon.jit
    def _whole_entries(lst, cnt, BLOCK_N: gl.constexpr, Lk):
        """Entries of a level that are whole key blocks: all but a partial last one (lists ascend)."""
        last = gl.load(lst + gl.maximum(cnt - 1, 0), mask=cnt > 0, other=0)
        return gl.where((cnt > 0) & ((last + 1) * BLOCK_N > Lk), cnt - 1, cnt)

    @gluon.jit
    def _pick(lvl, a, b, c, d):
        return gl.where(lvl == 0, a, gl.where(lvl == 1, b, gl.where(lvl == 2, c, d)))

    @gluon.jit
    def _sequence(lst, c1, c2, c4, c8, Lk, BLOCK_N: gl.constexpr, TILE: gl.constexpr, BOX1: gl.constexpr,
                  BOX2: gl.constexpr, BOX4: gl.constexpr, BOX8: gl.constexpr):
        """A query block's key tiles, levels 1, 2, 4, 8 in turn: (tiles of levels 1, 2, 4), (entry
        counts), (whole entries per level), total tiles; the consumers' view of the producer's order."""
        n1 = _level_tiles(c1, TILE // BOX1, BLOCK_N // BOX1)
        n2 = _level_tiles(c2, TILE // BOX2, (BLOCK_N // 2) // BOX2)
        n4 = _level_tiles(c4, TILE // BOX4, (BLOCK_N // 4) // BOX4)
        n8 = _level_tiles(c8, TILE // BOX8, (BLOCK_N // 8) // BOX8)
        wholes = (_whole_entries(lst, c1, BLOCK_N, Lk), _whole_entries(lst + c1, c2, BLOCK_N, Lk),
                  _whole_entries(lst + c1 + c2, c4, BLOCK_N, Lk), _whole_entries(lst + c1 + c2 + c4, c8, BLOCK_N, Lk))
        return (n1, n2, n4), (c1, c2, c4, c8), wholes, n1 + n2 + n4 + n8

    @gluon.jit
    def _step_info(step, lst, tiles, counts, wholes, BLOCK_N: gl.constexpr, TILE: gl.constexpr):
        """Step `step` of the sequence: (level index l of level 2**l, tile within the level, the
        level's list and entry count, whether the tile holds whole pooled rows only)."""
        n1, n2, n4 = tiles
        c1, c2, c4, c8 = counts
        lvl = (step >= n1).to(gl.int32) + (step >= n1 + n2).to(gl.int32) + (step >= n1 + n2 + n4).to(gl.int32)
        t = step - _pick(lvl, 0, n1, n1 + n2, n1 + n2 + n4)
        pooled = BLOCK_N >> lvl
        boxes = TILE // gl.minimum(pooled, TILE)
        per_entry = gl.maximum(pooled // TILE, 1)
        clean = ((t + 1) * boxes - 1) // per_entry < _pick(lvl, *wholes)
        return lvl, t, lst + _pick(lvl, 0, c1, c1 + c2, c1 + c2 + c4), _pick(lvl, *counts), clean

    @gluon.jit
    def _tile_columns(level_list, cnt, t, lvl, Lk, cols, BLOCK_N: gl.constexpr, TILE: gl.constexpr):
        """Tile t of level 2**lvl, per column: the pooled row, whether it is real (not padding, not
        past the head's pooled length), and its logit bias (log2 of the tokens it stands for; -inf
        where not real)."""
        s = 1 << lvl
        pooled = BLOCK_N >> lvl
        box = gl.minimum(pooled, TILE)
        per_entry = pooled // box
        g = t * (TILE // box) + cols // box
        entry = g // per_entry
        in_list = entry < cnt
        r = gl.load(level_list + entry, mask=in_list, other=0) * pooled + (g % per_entry) * box + cols % box
        valid = in_list & (r < (Lk + s - 1) // s)
        n = gl.maximum(gl.minimum(Lk - r * s, s), 1).to(gl.float32)
        return r, valid, gl.where(valid, gl.log2(n), float("-inf"))

    @gluon.jit
    def _tile_softmax(raw, m_i, l_i, step, lst, tiles, counts, wholes, qk_scale, Lk,
                      BLOCK_N: gl.constexpr, TILE: gl.constexpr):
        """Online-softmax update with key tile `step`; returns (m, l, P, the rescale of the output)."""
        lvl, t, level_list, cnt, clean = _step_info(step, lst, tiles, counts, wholes, BLOCK_N, TILE)
        log2_s = lvl.to(gl.float32)
        if clean:  # whole pooled rows: the constant bias log2(s)
            m_new = gl.maximum(m_i, gl.max(raw, 1) * qk_scale + log2_s)
            p = gl.exp2(raw * qk_scale + (log2_s - m_new)[:, None])
        else:
            cols = gl.arange(0, TILE, layout=gl.SliceLayout(0, raw.type.layout))
            _, _, bias = _tile_columns(level_list, cnt, t, lvl, Lk, cols, BLOCK_N, TILE)
            logits = raw * qk_scale + bias[None, :]
            m_new = gl.maximum(m_i, gl.max(logits, 1))
            p = gl.exp2(logits - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        return m_new, l_i * alpha + gl.sum(p, 1), p, alpha

    @gluon.jit
    def _take_turn(turns, n, C: gl.constexpr, PINGPONG: gl.constexpr):
        """With PINGPONG the consumers issue their products in turns (FlashAttention 3's schedule:
        one's exponentials run while the other's products do); consumer 0 goes first."""
        if PINGPONG:
            mbarrier.wait(turns.index(C), (n & 1) ^ (1 - C))

    @gluon.jit
    def _pass_turn(turns, C: gl.constexpr, PINGPONG: gl.constexpr):
        if PINGPONG:
            mbarrier.arrive(turns.index(1 - C), count=1)

    @gluon.jit
    def _fwd_consumer(q_smem, k_bufs, v_bufs, q_ready, k_ready, v_ready, empty, turns, OUT, LSE, lst, c1, c2, c4, c8,
                      bh, i, qk_scale, Lq, Lk, C: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      BOX1: gl.constexpr, BOX2: gl.constexpr, BOX4: gl.constexpr, BOX8: gl.constexpr,
                      STAGES: gl.constexpr, PINGPONG: gl.constexpr):
        """64 query rows over every level's tiles, then the normalised output and the base-2 LSE.

        Software-pipelined as FlashAttention 3's consumers: step t issues S_t = Q K_tᵀ and the
        previous tile's O += P V, and computes P_t while that product is on the tensor cores."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        TILE: gl.constexpr = k_bufs.shape[1]
        s_layout: gl.constexpr = wgmma_layout(TILE)
        acc_layout: gl.constexpr = wgmma_layout(HEAD_DIM)
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        row_layout: gl.constexpr = gl.SliceLayout(1, acc_layout)
        dtype: gl.constexpr = k_bufs.dtype
        q = q_smem.slice(C * 64, 64, dim=0)
        tiles, counts, wholes, total = _sequence(lst, c1, c2, c4, c8, Lk, BLOCK_N, TILE, BOX1, BOX2, BOX4, BOX8)
        m_i = gl.full([64], -1.0e30, gl.float32, layout=gl.SliceLayout(1, s_layout))
        l_i = gl.zeros([64], gl.float32, layout=gl.SliceLayout(1, s_layout))
        acc = gl.zeros([64, HEAD_DIM], gl.float32, layout=acc_layout)
        mbarrier.wait(q_ready, 0)
        if total > 0:
            mbarrier.wait(k_ready.index(0), 0)
            _take_turn(turns, 0, C, PINGPONG)
            raw = warpgroup_mma(q, k_bufs.index(0).permute((1, 0)), gl.zeros([64, TILE], gl.float32, layout=s_layout),
                                use_acc=False, is_async=True)
            _pass_turn(turns, C, PINGPONG)
            raw = warpgroup_mma_wait(num_outstanding=0, deps=(raw,))
            m_i, l_i, p, alpha = _tile_softmax(raw, m_i, l_i, 0, lst, tiles, counts, wholes, qk_scale, Lk,
                                               BLOCK_N, TILE)
            p_prev = gl.convert_layout(p.to(dtype), a_layout)
            for step in range(1, total):
                slot = step % STAGES
                prev = (step - 1) % STAGES
                mbarrier.wait(k_ready.index(slot), (step // STAGES) & 1)
                mbarrier.wait(v_ready.index(prev), ((step - 1) // STAGES) & 1)
                _take_turn(turns, step, C, PINGPONG)
                raw = warpgroup_mma(q, k_bufs.index(slot).permute((1, 0)),
                                    gl.zeros([64, TILE], gl.float32, layout=s_layout), use_acc=False, is_async=True)
                acc = warpgroup_mma(p_prev, v_bufs.index(prev), acc, is_async=True)
                _pass_turn(turns, C, PINGPONG)
                raw = warpgroup_mma_wait(num_outstanding=1, deps=(raw,))  # P V stays on the tensor cores
                m_i, l_i, p, alpha = _tile_softmax(raw, m_i, l_i, step, lst, tiles, counts, wholes, qk_scale, Lk,
                                                   BLOCK_N, TILE)
                acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                mbarrier.arrive(empty.index(prev), count=1)
                acc = acc * gl.convert_layout(alpha, row_layout)[:, None]
                p_prev = gl.convert_layout(p.to(dtype), a_layout)
            last = (total - 1) % STAGES
            mbarrier.wait(v_ready.index(last), ((total - 1) // STAGES) & 1)
            _take_turn(turns, total, C, PINGPONG)
            acc = warpgroup_mma(p_prev, v_bufs.index(last), acc, is_async=True)
            _pass_turn(turns, C, PINGPONG)
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            mbarrier.arrive(empty.index(last), count=1)
        nonempty = l_i > 0
        safe_l = gl.where(nonempty, l_i, 1.0)
        lse = gl.where(nonempty, m_i + gl.log2(safe_l), 0.0)  # an empty list writes zeros (LSE never read)
        out = acc / gl.convert_layout(safe_l, row_layout)[:, None]
        rows = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=row_layout)
        d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
        gl.store(OUT + (bh * Lq + rows)[:, None] * HEAD_DIM + d[None, :], out.to(OUT.dtype.element_ty),
                 mask=(rows < Lq)[:, None])
        lse_rows = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
        gl.store(LSE + bh * Lq + lse_rows, lse, mask=lse_rows < Lq)

    @gluon.jit
    def _fwd_kernel(q_desc, k1, v1, k2, v2, k4, v4, k8, v8, IDX, CNT, ORDER, OUT, LSE, qk_scale, Lq, Lk, n_qb, n_kb,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, TILE: gl.constexpr, STAGES: gl.constexpr,
                    REORDER: gl.constexpr, PINGPONG: gl.constexpr):
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        dtype: gl.constexpr = q_desc.dtype
        FIRST: gl.constexpr = 0
        SECOND: gl.constexpr = 1
        bh, i, row, lst = query_block(IDX, ORDER, n_qb, n_kb, REORDER)
        c1 = gl.load(CNT + row * 4)
        c2 = gl.load(CNT + row * 4 + 1)
        c4 = gl.load(CNT + row * 4 + 2)
        c8 = gl.load(CNT + row * 4 + 3)
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], k1.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], v1.layout)
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(q_ready, count=1)
        k_ready, empty = ring_barriers(STAGES, 2)  # both consumers read every key tile
        v_ready = barriers(STAGES, 1)
        turns = barriers(2, 1)
        fence_async_shared()
        BOX1: gl.constexpr = k1.block_type.shape[0]
        BOX2: gl.constexpr = k2.block_type.shape[0]
        BOX4: gl.constexpr = k4.block_type.shape[0]
        BOX8: gl.constexpr = k8.block_type.shape[0]
        gl.warp_specialize(
            [(_fwd_loader, (q_desc, k1, v1, k2, v2, k4, v4, k8, v8, q_smem, k_bufs, v_bufs, q_ready, k_ready,
                            v_ready, empty, lst, c1, c2, c4, c8, bh, i, Lq, Lk, BLOCK_M, BLOCK_N, STAGES)),
             (_fwd_consumer, (q_smem, k_bufs, v_bufs, q_ready, k_ready, v_ready, empty, turns, OUT, LSE, lst, c1, c2,
                              c4, c8, bh, i, qk_scale, Lq, Lk, FIRST, BLOCK_M, BLOCK_N, BOX1, BOX2, BOX4, BOX8,
                              STAGES, PINGPONG)),
             (_fwd_consumer, (q_smem, k_bufs, v_bufs, q_ready, k_ready, v_ready, empty, turns, OUT, LSE, lst, c1, c2,
                              c4, c8, bh, i, qk_scale, Lq, Lk, SECOND, BLOCK_M, BLOCK_N, BOX1, BOX2, BOX4, BOX8,
                              STAGES, PINGPONG))],
            [4, 4], [232, 232])


def launch_fwd_gluon(q, k, v, pyramid, plan, block_m, block_n, sm_scale, tile=64, stages=3, pingpong=False):
    """out [B,H,Lq,D] (q's dtype) and base-2 LSE [B,H,Lq] (fp32); arguments as
    `triton_forward.pyramid_forward`, `tile` the key rows per product (a multiple of 64)."""
    batch, heads, length_q, _ = q.shape
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, length_q), dtype=torch.float32, device=q.device)
    descs = []
    for s, (kk, vv) in zip((1, 2, 4, 8), [(k, v), *pyramid]):
        rows = box_rows(block_n, tile, s)
        descs += [descriptor(kk, rows), descriptor(vv, rows)]
    order = plan.order if plan.order is not None else plan.cnt  # placeholder pointer when unused
    _fwd_kernel[(n_qb, batch * heads)](
        descriptor(q, block_m), *descs, plan.idx, plan.cnt, order, out, lse,
        sm_scale * LOG2E, length_q, k.shape[2], n_qb, n_kb,
        BLOCK_M=block_m, BLOCK_N=block_n, TILE=tile, STAGES=stages, REORDER=plan.order is not None,
        PINGPONG=pingpong, num_warps=4,
    )
    return out, lse
