"""The pooled levels of the dQ pass for Hopper GPUs, in Gluon (KernelConfig.dq_pooled_gluon).

Why: in a trace of one forward + backward at the Wan shape and density 0.15 the Triton kernel that
does the pooled levels of the dQ pass took 3.15 of 9.35 ms of GPU time for a third of the
backward's products (benchmarks/NOTES.md, seventh session). Its warps also compute the pooled
keys' gradients and issue their fp32 atomics, and wait for both before the next tile. Here that
work has a warpgroup of its own, so dQ's products never wait for it:

  * a producer warpgroup loads the query block's Q and dO once and streams the key tiles of levels
    2, 4, 8 (gluon_forward's producer and tile order: small pooled blocks packed box by box);
  * two consumer warpgroups own 64 query rows each: S = Q K̄ᵀ and dP = dO V̄ᵀ issued together,
    P = exp2(S·c + log2 n - LSE), dS = P ∘ (dP - Δ), dQ += dS K̄; each leaves its half of P and dS
    (16-bit) in a double-buffered shared-memory tile and goes on to the next key tile;
  * a gradient warpgroup takes each tile's P and dS of all 128 rows and computes dV̄ = Pᵀ dO and
    dK̄ = scale · dSᵀ Q (K = 128), 64 columns at a time, added to the level's fp32 buffer with
    atomics (triton_backward's docstring says why atomics); by default one product after the
    other (PIPELINED=False: fewer live registers, faster on an H200 than overlapping them).

The atomics decide the speed: 5.1 GB of them at the benchmark's map (Nsight Compute: the L2 at
69 % of its peak, 89 % of its sectors hits, DRAM at 16 %). A first version issued them as 8-byte
vectors (the product accumulator's layout holds two consecutive columns per thread): twice the
operations of the Triton kernel's 16-byte ones, and 0.1-0.4 ms slower than it. Here each tile's
columns are relabelled in registers (`gluon_backward.to_pooled_order`) so every thread holds four
consecutive ones, and the level buffers keep that column order (`triton_backward.pooled_column`;
the dK/dV pass's fold reads it). H200, Wan shape, density 0.15: dQ pass 4.00-4.07 ms against
4.45-4.49 with the Triton kernel for the pooled levels (benchmarks/NOTES.md, eighth session).

The consumers store dQ · scale as the fp32 partial that `gluon_backward.launch_dq1_gluon` adds to
the level-1 pairs' dQ. CUDA only (compute capability 9.x), 16-bit inputs, D in {64, 128},
block_m 128, block_n a multiple of 64: `gluon_backward.supported_dq`.
"""

from __future__ import annotations

import torch

from .gluon_support import HAVE_GLUON
from .triton_forward import LOG2E

if HAVE_GLUON:
    from .gluon_backward import pooled_order_layout, to_pooled_order
    from .gluon_forward import _load_level, _sequence, _step_info, _tile_columns, box_rows
    from .gluon_support import (
        barriers,
        descriptor,
        fence_async_shared,
        gl,
        gluon,
        load_pair,
        mbarrier,
        query_block,
        ring_barriers,
        warpgroup_mma,
        warpgroup_mma_wait,
        wgmma_layout,
    )


if HAVE_GLUON:
    SHARED_TILES = gl.constexpr(2)  # P/dS tiles in flight between the consumers and the gradient warpgroup

    @gluon.jit
    def _pooled_loader(q_desc, do_desc, k2, v2, k4, v4, k8, v8, q_smem, do_smem, k_bufs, v_bufs, q_ready, k_ready,
                       v_ready, empty, lst, c1, c2, c4, c8, bh, i, Lq, Lk, BLOCK_M: gl.constexpr,
                       BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        """Producer: Q and dO once, then the key tiles of levels 2, 4, 8 in turn."""
        load_pair(q_desc, do_desc, (bh * Lq + i * BLOCK_M).to(gl.int32), q_ready, q_smem, do_smem)
        it = 0
        it = _load_level(k2, v2, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1, c2, it, bh * ((Lk + 1) // 2),
                         BLOCK_N, 2, STAGES)
        it = _load_level(k4, v4, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1 + c2, c4, it,
                         bh * ((Lk + 3) // 4), BLOCK_N, 4, STAGES)
        _load_level(k8, v8, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1 + c2 + c4, c8, it,
                    bh * ((Lk + 7) // 8), BLOCK_N, 8, STAGES)

    @gluon.jit
    def _pooled_consumer(q_smem, do_smem, k_bufs, v_bufs, p_bufs, ds_bufs, q_ready, k_ready, v_ready, empty,
                         shared_ready, shared_free, LSE, DELTA, PARTIAL, lst, c1, c2, c4, c8, bh, i, sm_scale, qk_scale,
                         Lq, Lk, C: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BOX1: gl.constexpr,
                         BOX2: gl.constexpr, BOX4: gl.constexpr, BOX8: gl.constexpr, STAGES: gl.constexpr):
        """64 query rows: dQ over the pooled tiles, P and dS handed on; stores dQ · scale (fp32)."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        TILE: gl.constexpr = k_bufs.shape[1]
        s_layout: gl.constexpr = wgmma_layout(TILE)
        acc_layout: gl.constexpr = wgmma_layout(HEAD_DIM)
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        dtype: gl.constexpr = q_smem.dtype
        tiles, counts, wholes, total = _sequence(lst, c1, c2, c4, c8, Lk, BLOCK_N, TILE, BOX1, BOX2, BOX4, BOX8)
        first = tiles[0]  # the level-1 tiles are the level-1 kernel's
        offs_m = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
        mask_m = offs_m < Lq  # rows past Lq (next head / zero fill): lse = +inf gives p = 0
        lse = gl.load(LSE + bh * Lq + offs_m, mask=mask_m, other=float("inf"))
        delta = gl.load(DELTA + bh * Lq + offs_m, mask=mask_m, other=0.0)
        q = q_smem.slice(C * 64, 64, dim=0)
        do = do_smem.slice(C * 64, 64, dim=0)
        dq = gl.zeros([64, HEAD_DIM], gl.float32, layout=acc_layout)
        mbarrier.wait(q_ready, 0)
        for step in range(first, total):
            n = step - first
            slot = n % STAGES
            phase = (n // STAGES) & 1
            mbarrier.wait(k_ready.index(slot), phase)
            k_tile = k_bufs.index(slot)
            s = warpgroup_mma(q, k_tile.permute((1, 0)), gl.zeros([64, TILE], gl.float32, layout=s_layout),
                              use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index(slot), phase)
            dp = warpgroup_mma(do, v_bufs.index(slot).permute((1, 0)),
                               gl.zeros([64, TILE], gl.float32, layout=s_layout), use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # dP stays on the tensor cores
            lvl, t, level_list, cnt, clean = _step_info(step, lst, tiles, counts, wholes, BLOCK_N, TILE)
            if clean:  # whole pooled rows: the constant bias log2(s)
                p = gl.exp2(s * qk_scale + (lvl.to(gl.float32) - lse)[:, None])
            else:
                cols = gl.arange(0, TILE, layout=gl.SliceLayout(0, s_layout))
                _, _, bias = _tile_columns(level_list, cnt, t, lvl, Lk, cols, BLOCK_N, TILE)
                p = gl.exp2(s * qk_scale + bias[None, :] - lse[:, None])
            dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
            ds16 = (p * (dp - delta[:, None])).to(dtype)
            dq = warpgroup_mma(gl.convert_layout(ds16, a_layout), k_tile, dq, is_async=True)
            buf = n % SHARED_TILES  # this half of P and dS for the gradient warpgroup, while dQ's product runs
            mbarrier.wait(shared_free.index(buf), ((n // SHARED_TILES) & 1) ^ 1)  # a fresh barrier passes parity 1
            p_bufs.index(buf).slice(C * 64, 64, dim=0).store(p.to(dtype))
            ds_bufs.index(buf).slice(C * 64, 64, dim=0).store(ds16)
            fence_async_shared()
            mbarrier.arrive(shared_ready.index(buf), count=1)
            dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
            mbarrier.arrive(empty.index(slot), count=1)
        rows = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, acc_layout))
        d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
        gl.store(PARTIAL + (bh * Lq + rows)[:, None] * HEAD_DIM + d[None, :], dq * sm_scale,
                 mask=(rows < Lq)[:, None])

    @gluon.jit
    def _tile_targets(step, lst, tiles, counts, wholes, Lk, rows, BLOCK_N: gl.constexpr, TILE: gl.constexpr):
        """Step `step`'s level index and, per tile row, the pooled row and whether it is real."""
        lvl, t, level_list, cnt, _ = _step_info(step, lst, tiles, counts, wholes, BLOCK_N, TILE)
        r, valid, _ = _tile_columns(level_list, cnt, t, lvl, Lk, rows, BLOCK_N, TILE)
        return lvl, r, valid

    @gluon.jit
    def _add_to_level(grad, G2, G4, G8, lvl, r, valid, bh, Lk, d0, HEAD_DIM: gl.constexpr):
        """Atomically add columns d0.. of a pooled tile's gradient [TILE, 64] to the fp32 buffer of
        level 2**lvl (real rows only), in `triton_backward.pooled_column` order: the folds that
        read the buffers (`launch_dkdv`) know it."""
        grad = to_pooled_order(grad)  # four consecutive columns per thread: 16-byte atomics
        d = d0 + gl.arange(0, grad.shape[1], layout=gl.SliceLayout(0, grad.type.layout))
        s = 1 << lvl
        head = bh * ((Lk + s - 1) // s) * HEAD_DIM  # int64 once; the per-element offsets stay int32
        offs = r[:, None] * HEAD_DIM + d[None, :]
        mask = valid[:, None]
        if lvl == 1:
            gl.atomic_add(G2 + head + offs, grad, mask=mask, sem="relaxed")
        elif lvl == 2:
            gl.atomic_add(G4 + head + offs, grad, mask=mask, sem="relaxed")
        else:
            gl.atomic_add(G8 + head + offs, grad, mask=mask, sem="relaxed")

    @gluon.jit
    def _issue_chunk(p_t, ds_t, q_smem, do_smem, zeros, C: gl.constexpr, HALVES: gl.constexpr):
        """Product C of a tile's gradients, 64 columns each: dV̄ = Pᵀ dO for C < HALVES, then dK̄ / scale = dSᵀ Q."""
        if C < HALVES:
            return warpgroup_mma(p_t, do_smem.slice(C * 64, 64, dim=1), zeros, use_acc=False, is_async=True)
        else:
            return warpgroup_mma(ds_t, q_smem.slice((C - HALVES) * 64, 64, dim=1), zeros, use_acc=False,
                                 is_async=True)

    @gluon.jit
    def _pooled_grads(q_smem, do_smem, p_bufs, ds_bufs, q_ready, shared_ready, shared_free, DK2, DV2, DK4, DV4, DK8,
                      DV8, lst, c1, c2, c4, c8, bh, sm_scale, Lk, BLOCK_N: gl.constexpr, BOX1: gl.constexpr,
                      BOX2: gl.constexpr, BOX4: gl.constexpr, BOX8: gl.constexpr, ATOMICS: gl.constexpr,
                      PIPELINED: gl.constexpr):
        """Gradient warpgroup: per pooled tile dV̄ = Pᵀ dO and dK̄ = scale · dSᵀ Q over the block's
        128 query rows, in products of 64 columns (a whole [TILE, D] fp32 tile beside its atomics'
        addresses does not fit this warpgroup's registers), each product's atomics issued after it
        or, with PIPELINED, while the next product runs; the next tile's target rows load
        meanwhile. ATOMICS=False drops the additions (timing only: the gradients are then wrong)."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        TILE: gl.constexpr = p_bufs.shape[2]
        HALVES: gl.constexpr = HEAD_DIM // 64
        half_layout: gl.constexpr = wgmma_layout(64)
        tiles, counts, wholes, total = _sequence(lst, c1, c2, c4, c8, Lk, BLOCK_N, TILE, BOX1, BOX2, BOX4, BOX8)
        first = tiles[0]
        rows = gl.arange(0, TILE, layout=gl.SliceLayout(1, pooled_order_layout(64)))
        zeros = gl.zeros([TILE, 64], gl.float32, layout=half_layout)
        lvl, r, valid = _tile_targets(first, lst, tiles, counts, wholes, Lk, rows, BLOCK_N, TILE)
        mbarrier.wait(q_ready, 0)
        for step in range(first, total):
            n = step - first
            buf = n % SHARED_TILES
            next_lvl, next_r, next_valid = _tile_targets(gl.minimum(step + 1, total - 1), lst, tiles, counts, wholes,
                                                         Lk, rows, BLOCK_N, TILE)
            mbarrier.wait(shared_ready.index(buf), (n // SHARED_TILES) & 1)
            p_t = p_bufs.index(buf).permute((1, 0))  # [TILE, BLOCK_M]: keys x query rows
            ds_t = ds_bufs.index(buf).permute((1, 0))
            if PIPELINED:  # each product's atomics while the next product runs (two accumulators live)
                acc = _issue_chunk(p_t, ds_t, q_smem, do_smem, zeros, 0, HALVES)
            for c in gl.static_range(2 * HALVES):
                if not PIPELINED:
                    grad = warpgroup_mma_wait(num_outstanding=0,
                                              deps=(_issue_chunk(p_t, ds_t, q_smem, do_smem, zeros, c, HALVES),))
                elif c + 1 < 2 * HALVES:
                    following = _issue_chunk(p_t, ds_t, q_smem, do_smem, zeros, c + 1, HALVES)
                    grad = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                    acc = following
                else:
                    grad = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                if c == 2 * HALVES - 1:
                    mbarrier.arrive(shared_free.index(buf), count=1)  # P and dS read: the consumers may refill
                if ATOMICS:
                    if c < HALVES:
                        _add_to_level(grad, DV2, DV4, DV8, lvl, r, valid, bh, Lk, c * 64, HEAD_DIM)
                    else:
                        _add_to_level(grad * sm_scale, DK2, DK4, DK8, lvl, r, valid, bh, Lk, (c - HALVES) * 64,
                                      HEAD_DIM)
            lvl, r, valid = next_lvl, next_r, next_valid

    @gluon.jit
    def _pooled_dq_kernel(q_desc, do_desc, k2, v2, k4, v4, k8, v8, LSE, DELTA, PARTIAL, DK2, DV2, DK4, DV4, DK8, DV8,
                          IDX, CNT, ORDER, sm_scale, qk_scale, Lq, Lk, n_qb, n_kb, BLOCK_M: gl.constexpr,
                          BLOCK_N: gl.constexpr, BOX1: gl.constexpr, TILE: gl.constexpr, STAGES: gl.constexpr,
                          REORDER: gl.constexpr, CONSUMER_REGS: gl.constexpr, GRAD_REGS: gl.constexpr,
                          ATOMICS: gl.constexpr, PIPELINED: gl.constexpr):
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        dtype: gl.constexpr = q_desc.dtype
        FIRST: gl.constexpr = 0
        SECOND: gl.constexpr = 1
        BOX2: gl.constexpr = k2.block_type.shape[0]
        BOX4: gl.constexpr = k4.block_type.shape[0]
        BOX8: gl.constexpr = k8.block_type.shape[0]
        bh, i, row, lst = query_block(IDX, ORDER, n_qb, n_kb, REORDER)
        c1 = gl.load(CNT + row * 4)
        c2 = gl.load(CNT + row * 4 + 1)
        c4 = gl.load(CNT + row * 4 + 2)
        c8 = gl.load(CNT + row * 4 + 3)
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
        do_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], do_desc.layout)
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], k2.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], v2.layout)
        shared_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, TILE], dtype)
        p_bufs = gl.allocate_shared_memory(dtype, [SHARED_TILES, BLOCK_M, TILE], shared_layout)
        ds_bufs = gl.allocate_shared_memory(dtype, [SHARED_TILES, BLOCK_M, TILE], shared_layout)
        q_ready = barriers(1, 1).index(0)
        k_ready, empty = ring_barriers(STAGES, 2)  # both consumers read every key tile
        v_ready = barriers(STAGES, 1)
        shared_ready = barriers(SHARED_TILES, 2)  # both consumers' halves written
        shared_free = barriers(SHARED_TILES, 1)  # the gradient warpgroup's products done
        fence_async_shared()
        gl.warp_specialize(
            [(_pooled_loader, (q_desc, do_desc, k2, v2, k4, v4, k8, v8, q_smem, do_smem, k_bufs, v_bufs, q_ready,
                               k_ready, v_ready, empty, lst, c1, c2, c4, c8, bh, i, Lq, Lk, BLOCK_M, BLOCK_N,
                               STAGES)),
             (_pooled_consumer, (q_smem, do_smem, k_bufs, v_bufs, p_bufs, ds_bufs, q_ready, k_ready, v_ready, empty,
                                 shared_ready, shared_free, LSE, DELTA, PARTIAL, lst, c1, c2, c4, c8, bh, i, sm_scale,
                                 qk_scale, Lq, Lk, FIRST, BLOCK_M, BLOCK_N, BOX1, BOX2, BOX4, BOX8, STAGES)),
             (_pooled_consumer, (q_smem, do_smem, k_bufs, v_bufs, p_bufs, ds_bufs, q_ready, k_ready, v_ready, empty,
                                 shared_ready, shared_free, LSE, DELTA, PARTIAL, lst, c1, c2, c4, c8, bh, i, sm_scale,
                                 qk_scale, Lq, Lk, SECOND, BLOCK_M, BLOCK_N, BOX1, BOX2, BOX4, BOX8, STAGES)),
             (_pooled_grads, (q_smem, do_smem, p_bufs, ds_bufs, q_ready, shared_ready, shared_free, DK2, DV2, DK4, DV4,
                              DK8, DV8, lst, c1, c2, c4, c8, bh, sm_scale, Lk, BLOCK_N, BOX1, BOX2, BOX4, BOX8,
                              ATOMICS, PIPELINED))],
            [4, 4, 4], [CONSUMER_REGS, CONSUMER_REGS, GRAD_REGS])


def launch_pooled_dq_gluon(q, k, do, lse, delta, pyramid, pooled_grads, plan, block_m, block_n, sm_scale, tile=64,
                           stages=2, regs=(184, 120), atomics=True, pipelined=False):
    """The pooled levels' dQ · scale as an fp32 [B,H,Lq,D] partial; adds their dK̄/dV̄ into
    pooled_grads (zeroed fp32 [B,H,ceil(Lk/s),D], order dk2, dv2, dk4, dv4, dk8, dv8) on the way.
    Arguments as `triton_backward.launch_dq` (k only for its length); `regs` the registers per
    thread of the consumers and of the gradient warpgroup (the producer gets what is left of 512);
    atomics=False for timing only (`KernelConfig.dq_pooled_atomics`); pipelined: the gradient
    warpgroup issues a product's atomics while the next product runs (two accumulators live)."""
    batch, heads, length_q, _ = q.shape
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    partial = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    descs = []
    for s, (kk, vv) in zip((2, 4, 8), pyramid):
        rows = box_rows(block_n, tile, s)
        descs += [descriptor(kk, rows), descriptor(vv, rows)]
    order = plan.order if plan.order is not None else plan.cnt  # placeholder pointer when unused
    _pooled_dq_kernel[(n_qb, batch * heads)](
        descriptor(q, block_m), descriptor(do, block_m), *descs, lse, delta, partial, *pooled_grads,
        plan.idx, plan.cnt, order, sm_scale, sm_scale * LOG2E, length_q, k.shape[2], n_qb, n_kb,
        BLOCK_M=block_m, BLOCK_N=block_n, BOX1=box_rows(block_n, tile, 1), TILE=tile, STAGES=stages,
        REORDER=plan.order is not None, CONSUMER_REGS=regs[0], GRAD_REGS=regs[1], ATOMICS=atomics, PIPELINED=pipelined,
        num_warps=4,
    )
    return partial
