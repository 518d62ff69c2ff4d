"""The dQ pass of pyramid attention for Hopper GPUs, every level in one Gluon kernel (KernelConfig.dq_gluon_all).

Why: the Triton dQ kernel of the pooled levels ran at about half the tensor-core rate of the
Gluon level-1 kernel, and the split cost an fp32 partial (written, read, 4·B·H·L·D bytes).
Here one kernel walks a query block's whole sequence of key tiles with the forward's producer
(gluon_forward: levels 1, 2, 4, 8 in turn, small pooled blocks packed box by box into one tile);
two consumer warpgroups own 64 query rows each and share every tile:

  * every tile: S = Q Kᵀ and dP = dO Vᵀ issued together, P = exp2(S·c + log2 n - LSE) while dP
    is on the tensor cores, dS = P ∘ (dP - Δ), dQ += dS K;
  * pooled tiles also give the pooled keys' gradients dV̄ = Pᵀ dO and dK̄ = scale · dSᵀ Q over the
    block's 128 query rows: both consumers put their halves of P and dS in shared memory, then
    consumer 0 computes dV̄ and consumer 1 dK̄ (one product each, K = 128), and each adds its
    tile to the level's fp32 buffer with atomics, as the Triton kernel does (its docstring says why).

CUDA only (compute capability 9.x), 16-bit inputs, D in {64, 128}, block_m 128, block_n a
multiple of 64, sm_scale > 0: `gluon_forward.supported`.
"""

from __future__ import annotations

import torch

from .gluon_support import HAVE_GLUON
from .triton_forward import LOG2E

if HAVE_GLUON:
    from .gluon_forward import _load_level, _sequence, _step_info, _tile_columns, level_geometry
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


if HAVE_GLUON:

    @gluon.jit
    def _dq_loader(q_desc, do_desc, k1, v1, k2, v2, k4, v4, k8, v8, q_smem, do_smem, k_bufs, v_bufs, q_ready,
                   k_ready, v_ready, empty, lst, c1, c2, c4, c8, bh, i, Lq, Lk,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        """Producer: the block's Q and dO once, then every level's key tiles (gluon_forward's order)."""
        row = (bh * Lq + i * BLOCK_M).to(gl.int32)
        mbarrier.expect(q_ready, q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [row, 0], q_ready, q_smem)
        tma.async_copy_global_to_shared(do_desc, [row, 0], q_ready, do_smem)
        it = 0
        it = _load_level(k1, v1, k_bufs, v_bufs, k_ready, v_ready, empty, lst, c1, it, bh * Lk, BLOCK_N, 1, STAGES)
        it = _load_level(k2, v2, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1, c2, it, bh * ((Lk + 1) // 2),
                         BLOCK_N, 2, STAGES)
        it = _load_level(k4, v4, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1 + c2, c4, it,
                         bh * ((Lk + 3) // 4), BLOCK_N, 4, STAGES)
        _load_level(k8, v8, k_bufs, v_bufs, k_ready, v_ready, empty, lst + c1 + c2 + c4, c8, it,
                    bh * ((Lk + 7) // 8), BLOCK_N, 8, STAGES)

    @gluon.jit
    def _add_to_level(grad, G2, G4, G8, lvl, level_list, cnt, t, bh, Lk, d0, HEAD_DIM: gl.constexpr,
                      BLOCK_N: gl.constexpr, TILE: gl.constexpr):
        """Atomically add columns d0.. of a pooled tile's gradient [TILE, ·] to its level's fp32
        buffer (real rows only)."""
        cols = gl.arange(0, TILE, layout=gl.SliceLayout(1, grad.type.layout))
        d = d0 + gl.arange(0, grad.shape[1], layout=gl.SliceLayout(0, grad.type.layout))
        r, valid, _ = _tile_columns(level_list, cnt, t, lvl, Lk, cols, BLOCK_N, TILE)
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
    def _dq_consumer(q_smem, do_smem, k_bufs, v_bufs, p_smem, ds_smem, q_ready, k_ready, v_ready, empty,
                     shared_ready, shared_free, LSE, DELTA, DQ, G2, G4, G8, lst, c1, c2, c4, c8, bh, i,
                     sm_scale, qk_scale, Lq, Lk, C: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     BOX1: gl.constexpr, BOX2: gl.constexpr, BOX4: gl.constexpr, BOX8: gl.constexpr,
                     STAGES: gl.constexpr):
        """64 query rows: dQ over every tile; on pooled tiles dV̄ (C = 0) or dK̄ (C = 1) of all 128 rows.
        G2/G4/G8 are the level buffers this consumer adds to (dV̄ for C = 0, dK̄ for C = 1)."""
        HEAD_DIM: gl.constexpr = q_smem.shape[1]
        TILE: gl.constexpr = k_bufs.shape[1]
        s_layout: gl.constexpr = wgmma_layout(TILE)
        acc_layout: gl.constexpr = wgmma_layout(HEAD_DIM)
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        dtype: gl.constexpr = q_smem.dtype
        tiles, counts, wholes, total = _sequence(lst, c1, c2, c4, c8, Lk, BLOCK_N, TILE, BOX1, BOX2, BOX4, BOX8)
        offs_m = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
        mask_m = offs_m < Lq  # rows past Lq (next head / zero fill): lse = +inf gives p = 0
        lse = gl.load(LSE + bh * Lq + offs_m, mask=mask_m, other=float("inf"))
        delta = gl.load(DELTA + bh * Lq + offs_m, mask=mask_m, other=0.0)
        q = q_smem.slice(C * 64, 64, dim=0)
        do = do_smem.slice(C * 64, 64, dim=0)
        dq = gl.zeros([64, HEAD_DIM], gl.float32, layout=acc_layout)
        mbarrier.wait(q_ready, 0)
        exchanges = 0
        for step in range(total):
            slot = step % STAGES
            phase = (step // STAGES) & 1
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
            if lvl > 0:  # both halves of P and dS into shared memory while dQ's product runs
                mbarrier.wait(shared_free, (exchanges & 1) ^ 1)  # a fresh barrier passes parity 1
                p_smem.slice(C * 64, 64, dim=0).store(p.to(dtype))
                ds_smem.slice(C * 64, 64, dim=0).store(ds16)
                fence_async_shared()
                mbarrier.arrive(shared_ready, count=1)
            dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
            mbarrier.arrive(empty.index(slot), count=1)
            if lvl > 0:  # one 128-row product per consumer, 64 columns at a time (a whole [TILE, D]
                # fp32 tile next to its atomics' offsets spills)
                mbarrier.wait(shared_ready, exchanges & 1)
                zeros = gl.zeros([TILE, 64], gl.float32, layout=wgmma_layout(64))
                for h in gl.static_range(HEAD_DIM // 64):
                    if C == 0:
                        grad = warpgroup_mma(p_smem.permute((1, 0)), do_smem.slice(h * 64, 64, dim=1), zeros,
                                             use_acc=False, is_async=True)
                        grad = warpgroup_mma_wait(num_outstanding=0, deps=(grad,))
                    else:
                        grad = warpgroup_mma(ds_smem.permute((1, 0)), q_smem.slice(h * 64, 64, dim=1), zeros,
                                             use_acc=False, is_async=True)
                        grad = warpgroup_mma_wait(num_outstanding=0, deps=(grad,)) * sm_scale
                    if h == HEAD_DIM // 64 - 1:
                        mbarrier.arrive(shared_free, count=1)
                    _add_to_level(grad, G2, G4, G8, lvl, level_list, cnt, t, bh, Lk, h * 64, HEAD_DIM, BLOCK_N,
                                  TILE)
                exchanges += 1
        rows = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, acc_layout))
        d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
        gl.store(DQ + (bh * Lq + rows)[:, None] * HEAD_DIM + d[None, :], (dq * sm_scale).to(DQ.dtype.element_ty),
                 mask=(rows < Lq)[:, None])

    @gluon.jit
    def _dq_kernel(q_desc, do_desc, k1, v1, k2, v2, k4, v4, k8, v8, LSE, DELTA, DQ, DK2, DV2, DK4, DV4, DK8, DV8,
                   IDX, CNT, ORDER, sm_scale, qk_scale, Lq, Lk, n_qb, n_kb,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, TILE: gl.constexpr, STAGES: gl.constexpr,
                   REORDER: gl.constexpr):
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        dtype: gl.constexpr = q_desc.dtype
        FIRST: gl.constexpr = 0
        SECOND: gl.constexpr = 1
        BOX1: gl.constexpr = k1.block_type.shape[0]
        BOX2: gl.constexpr = k2.block_type.shape[0]
        BOX4: gl.constexpr = k4.block_type.shape[0]
        BOX8: gl.constexpr = k8.block_type.shape[0]
        pid = gl.program_id(0)
        bh = gl.program_id(1).to(gl.int64)
        if REORDER:
            i = gl.load(ORDER + bh * n_qb + pid)
        else:
            i = pid
        row = bh * n_qb + i
        lst = IDX + row * n_kb
        c1 = gl.load(CNT + row * 4)
        c2 = gl.load(CNT + row * 4 + 1)
        c4 = gl.load(CNT + row * 4 + 2)
        c8 = gl.load(CNT + row * 4 + 3)
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
        do_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], do_desc.layout)
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], k1.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, TILE, HEAD_DIM], v1.layout)
        pds_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, TILE], dtype)
        p_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, TILE], pds_layout)
        ds_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, TILE], pds_layout)
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(q_ready, count=1)
        k_ready, empty = ring_barriers(STAGES, 2)  # both consumers read every key tile
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for slot in gl.static_range(STAGES):
            mbarrier.init(v_ready.index(slot), count=1)
        shared_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        shared_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(shared_ready, count=2)
        mbarrier.init(shared_free, count=2)
        fence_async_shared()
        gl.warp_specialize(
            [(_dq_loader, (q_desc, do_desc, k1, v1, k2, v2, k4, v4, k8, v8, q_smem, do_smem, k_bufs, v_bufs, q_ready,
                           k_ready, v_ready, empty, lst, c1, c2, c4, c8, bh, i, Lq, Lk, BLOCK_M, BLOCK_N, STAGES)),
             (_dq_consumer, (q_smem, do_smem, k_bufs, v_bufs, p_smem, ds_smem, q_ready, k_ready, v_ready, empty,
                             shared_ready, shared_free, LSE, DELTA, DQ, DV2, DV4, DV8, lst, c1, c2, c4, c8, bh, i,
                             sm_scale, qk_scale, Lq, Lk, FIRST, BLOCK_M, BLOCK_N, BOX1, BOX2, BOX4, BOX8, STAGES)),
             (_dq_consumer, (q_smem, do_smem, k_bufs, v_bufs, p_smem, ds_smem, q_ready, k_ready, v_ready, empty,
                             shared_ready, shared_free, LSE, DELTA, DQ, DK2, DK4, DK8, lst, c1, c2, c4, c8, bh, i,
                             sm_scale, qk_scale, Lq, Lk, SECOND, BLOCK_M, BLOCK_N, BOX1, BOX2, BOX4, BOX8, STAGES))],
            [4, 4], [232, 232])


def launch_dq_gluon(q, k, v, do, lse, delta, pyramid, pooled_grads, plan, block_m, block_n, sm_scale, tile=64, stages=2):
    """dQ (q's dtype) of every level; adds the pooled levels' dK̄/dV̄ into pooled_grads (zeroed fp32
    [B,H,ceil(Lk/s),D], order dk2, dv2, dk4, dv4, dk8, dv8) on the way. Arguments as `launch_dq`."""
    batch, heads, length_q, _ = q.shape
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    dq = torch.empty_like(q)
    descs = []
    for s, (kk, vv) in zip((1, 2, 4, 8), [(k, v), *pyramid]):
        box = level_geometry(block_n, tile, s)[0]
        descs += [descriptor(kk, box), descriptor(vv, box)]
    order = plan.order if plan.order is not None else plan.cnt  # placeholder pointer when unused
    _dq_kernel[(n_qb, batch * heads)](
        descriptor(q, block_m), descriptor(do, block_m), *descs, lse, delta, dq, *pooled_grads,
        plan.idx, plan.cnt, order, sm_scale, sm_scale * LOG2E, length_q, k.shape[2], n_qb, n_kb,
        BLOCK_M=block_m, BLOCK_N=block_n, TILE=tile, STAGES=stages, REORDER=plan.order is not None, num_warps=4,
    )
    return dq
