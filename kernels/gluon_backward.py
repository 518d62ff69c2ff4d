"""Backward passes of pyramid attention for Hopper GPUs, in Gluon (KernelConfig.dkdv_gluon, dq_gluon).

Why: Triton 3.6 holds K and V of the dK/dV pass in registers as operands of its products and
spills ~2.2 KB per thread (ptxas for sm_90, benchmarks/kernel_resources.py), and it waits for
every product as soon as it is issued. Here operands stay in shared memory, where the tensor cores
read them, and the schedule is explicit (FlashAttention 3's structure): a producer warpgroup
streams tiles by TMA into rings of shared-memory buffers (mbarriers mark full/free), and two
consumer warpgroups compute, so one's exponentials overlap the other's products.

  * dK/dV pass (`launch_dkdv_gluon`): the work of `triton_backward._bwd_dkdv_kernel`. Each
    consumer owns one 64-key sub-block and walks the level-1 query blocks of its transposed list
    in 64-row steps: Sᵀ = K Qᵀ and dPᵀ = V dOᵀ issued together, Pᵀ formed while dPᵀ is still on
    the tensor cores, dV += Pᵀ dO, dK += dSᵀ Q; then the pooled levels' gradients folded onto
    member keys and one store.
  * dQ pass, level 1 (`launch_dq1_gluon`): per query block, the two consumers own 64 rows each and
    share the K/V tiles of its level-1 entries (64-key steps): dQ += dS K. The pooled levels are
    done first, by gluon_pooled_dq (KernelConfig.dq_pooled_gluon) or the Triton dQ kernel
    (gathered tiles, fp32 atomics for their dK̄/dV̄); either writes an fp32 partial this kernel
    adds before its store.

CUDA only (compute capability 9.x), 16-bit inputs, D in {64, 128}, block_m and block_n multiples
of 64 (the dQ kernel: block_m 128).
"""

from __future__ import annotations

import torch

from .gluon_support import HAVE_GLUON, on_hopper
from .triton_forward import LOG2E
from .triton_launch import cdiv

if HAVE_GLUON:
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

SUB = 64  # keys per consumer and query rows per step: one warpgroup's product height
STAGES = 2  # (Q, dO) tiles in flight per consumer


def supported(q: torch.Tensor, block_m: int, block_n: int) -> bool:
    """Whether the Gluon pass runs for these inputs (else the Triton kernel does)."""
    return (on_hopper(q.device) and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] in (64, 128)
            and block_m % SUB == 0 and block_n % SUB == 0)


if HAVE_GLUON:

    @gluon.jit
    def _key_item(item, ORDERT, bh, n_kb, SPLIT: gl.constexpr, REORDER: gl.constexpr):
        """(key block, 64-key sub-block) of work item `item` of a head; heavy-first when REORDER."""
        if REORDER:
            j = gl.load(ORDERT + bh * n_kb + item // SPLIT)
        else:
            j = item // SPLIT
        return j, item % SPLIT

    @gluon.jit
    def _load_step(q_desc, do_desc, q_bufs, do_bufs, ready, empty, IDXT, list_base, it, bh, Lq,
                   buf0: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr):
        """Producer: step `it` of one consumer's list, (Q, dO) rows into its ring once the slot is free."""
        NSUB: gl.constexpr = BLOCK_M // 64
        slot = buf0 + it % STAGES
        mbarrier.wait(empty.index(slot), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
        i = gl.load(IDXT + list_base + it // NSUB)
        row = (bh * Lq + i * BLOCK_M + (it % NSUB) * 64).to(gl.int32)
        load_pair(q_desc, do_desc, row, ready.index(slot), q_bufs.index(slot), do_bufs.index(slot))

    @gluon.jit
    def _dkdv_loader(q_desc, do_desc, k_desc, v_desc, q_bufs, do_bufs, k_smem, v_smem, kv_ready, ready, empty,
                     IDXT, CNTT, ORDERT, bh, pid, Lq, Lk, n_qb, n_kb, n_items,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, REORDER: gl.constexpr):
        SPLIT: gl.constexpr = BLOCK_N // 64
        NSUB: gl.constexpr = BLOCK_M // 64
        item0 = 2 * pid
        item1 = 2 * pid + 1
        j0, sub0 = _key_item(item0, ORDERT, bh, n_kb, SPLIT, REORDER)
        j1, sub1 = _key_item(gl.minimum(item1, n_items - 1), ORDERT, bh, n_kb, SPLIT, REORDER)
        has1 = item1 < n_items
        for c in gl.static_range(2):
            j = j0 if c == 0 else j1
            sub = sub0 if c == 0 else sub1
            live = True if c == 0 else has1
            row = (bh * Lk + j * BLOCK_N + sub * 64).to(gl.int32)
            load_pair(k_desc, v_desc, row, kv_ready.index(c), k_smem.index(c), v_smem.index(c), pred=live)
        n0 = gl.load(CNTT + bh * n_kb + j0) * NSUB
        n1 = gl.where(has1, gl.load(CNTT + bh * n_kb + j1) * NSUB, 0)
        base0 = (bh * n_kb + j0) * n_qb
        base1 = (bh * n_kb + j1) * n_qb
        for it in range(gl.maximum(n0, n1)):  # alternate between the consumers' lists
            if it < n0:
                _load_step(q_desc, do_desc, q_bufs, do_bufs, ready, empty, IDXT, base0, it, bh, Lq, 0, BLOCK_M,
                           STAGES)
            if it < n1:
                _load_step(q_desc, do_desc, q_bufs, do_bufs, ready, empty, IDXT, base1, it, bh, Lq, STAGES,
                           BLOCK_M, STAGES)

    @gluon.constexpr_function
    def pooled_order_layout(cols):
        """One warpgroup's [64, cols] product accumulator with its columns relabelled into the
        pooled buffers' order (`to_pooled_order`): each thread's four consecutive columns first
        in its registers, so loads and atomics of them are 16-byte vectors."""
        reg_bases = [[0, 1], [0, 2], [8, 0]] + [[0, 16 << i] for i in range((cols // 16).bit_length() - 1)]
        return gl.DistributedLinearLayout(reg_bases=reg_bases, lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
                                          warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, cols])

    @gluon.jit
    def to_pooled_order(acc):
        """An accumulator tile [64, C] relabelled so that column 16a + 4t + 2b + e holds column
        16a + 8b + 2t + e (`triton_backward.pooled_column`): the four columns thread t of a quad
        holds in every sixteen become consecutive. Moves no data."""
        rows: gl.constexpr = acc.shape[0]
        cols: gl.constexpr = acc.shape[1]
        acc = gl.reshape(gl.permute(gl.reshape(acc, [rows, cols // 16, 2, 4, 2]), (0, 1, 3, 2, 4)), [rows, cols])
        return gl.convert_layout(acc, pooled_order_layout(cols))

    @gluon.jit
    def natural_column(n):
        """The column whose value sits at column n of a `to_pooled_order` tile."""
        return 16 * (n // 16) + 8 * ((n // 2) % 2) + 2 * ((n // 4) % 4) + n % 2

    @gluon.jit
    def _add_pooled(grad, BUF, offs_n, mask_n, d, bh, Lk, S: gl.constexpr, HEAD_DIM: gl.constexpr):
        """grad + a level-S pooled gradient spread onto its member keys (d mean / d member = 1/n);
        d: the buffer column of each of grad's columns."""
        r = offs_n // S
        inv_n = 1.0 / gl.maximum(gl.minimum(Lk - r * S, S), 1).to(gl.float32)
        offs = (bh * ((Lk + S - 1) // S) + r)[:, None] * HEAD_DIM + d[None, :]
        return grad + gl.load(BUF + offs, mask=mask_n[:, None], other=0.0) * inv_n[:, None]

    @gluon.jit
    def _finish(grad, G2, G4, G8, OUT, offs_n, d, bh, Lk, HEAD_DIM: gl.constexpr, PERMUTED: gl.constexpr):
        """Fold the pooled levels in and store; one of dK, dV at a time, so only one pooled tile
        is live next to the accumulators. PERMUTED: the buffers hold gluon_pooled_dq's column
        order; the tile is relabelled into it, so the loads stay 16-byte vectors."""
        if PERMUTED:
            grad = to_pooled_order(grad)
            d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, grad.type.layout))
            offs_n = gl.convert_layout(offs_n, gl.SliceLayout(1, grad.type.layout))
            out_cols = natural_column(d)
        else:
            out_cols = d
        mask_n = offs_n < Lk
        grad = _add_pooled(grad, G2, offs_n, mask_n, d, bh, Lk, 2, HEAD_DIM)
        grad = _add_pooled(grad, G4, offs_n, mask_n, d, bh, Lk, 4, HEAD_DIM)
        grad = _add_pooled(grad, G8, offs_n, mask_n, d, bh, Lk, 8, HEAD_DIM)
        gl.store(OUT + (bh * Lk + offs_n)[:, None] * HEAD_DIM + out_cols[None, :], grad.to(OUT.dtype.element_ty),
                 mask=mask_n[:, None])

    @gluon.jit
    def _dkdv_consumer(q_bufs, do_bufs, k_smem, v_smem, kv_ready, ready, empty, LSE, DELTA, DK, DV,
                       DK2, DV2, DK4, DV4, DK8, DV8, IDXT, CNTT, ORDERT,
                       bh, pid, sm_scale, qk_scale, Lq, Lk, n_qb, n_kb, n_items,
                       C: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                       STAGES: gl.constexpr, REORDER: gl.constexpr, PERMUTED: gl.constexpr):
        SPLIT: gl.constexpr = BLOCK_N // 64
        NSUB: gl.constexpr = BLOCK_M // 64
        s_layout: gl.constexpr = wgmma_layout(64)
        acc_layout: gl.constexpr = wgmma_layout(HEAD_DIM)
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        dtype: gl.constexpr = q_bufs.dtype
        item = 2 * pid + C
        if item < n_items:
            j, sub = _key_item(item, ORDERT, bh, n_kb, SPLIT, REORDER)
            n = gl.load(CNTT + bh * n_kb + j) * NSUB
            list_base = (bh * n_kb + j) * n_qb
            k_tile = k_smem.index(C)
            v_tile = v_smem.index(C)
            dk = gl.zeros([64, HEAD_DIM], gl.float32, layout=acc_layout)
            dv = gl.zeros([64, HEAD_DIM], gl.float32, layout=acc_layout)
            mbarrier.wait(kv_ready.index(C), 0)
            for it in range(n):
                slot = C * STAGES + it % STAGES
                mbarrier.wait(ready.index(slot), (it // STAGES) & 1)
                i = gl.load(IDXT + list_base + it // NSUB)
                offs_m = i * BLOCK_M + (it % NSUB) * 64 + gl.arange(0, 64, layout=gl.SliceLayout(0, s_layout))
                mask_m = offs_m < Lq  # rows past Lq (next head / zero fill): lse = +inf gives p = 0
                lse = gl.load(LSE + bh * Lq + offs_m, mask=mask_m, other=float("inf"))
                q_tile = q_bufs.index(slot)
                do_tile = do_bufs.index(slot)
                s_t = warpgroup_mma(k_tile, q_tile.permute((1, 0)), gl.zeros([64, 64], gl.float32, layout=s_layout),
                                    use_acc=False, is_async=True)
                dp_t = warpgroup_mma(v_tile, do_tile.permute((1, 0)),
                                     gl.zeros([64, 64], gl.float32, layout=s_layout), use_acc=False, is_async=True)
                s_t = warpgroup_mma_wait(num_outstanding=1, deps=(s_t,))  # dPᵀ stays on the tensor cores
                p_t = gl.exp2(s_t * qk_scale - lse[None, :])
                dv = warpgroup_mma(gl.convert_layout(p_t.to(dtype), a_layout), do_tile, dv, is_async=True)
                delta = gl.load(DELTA + bh * Lq + offs_m, mask=mask_m, other=0.0)
                # registers: wait for dV's product before forming dSᵀ (its bf16 Pᵀ operand is then free)
                dp_t, dv = warpgroup_mma_wait(num_outstanding=0, deps=(dp_t, dv))
                ds16 = gl.convert_layout((p_t * (dp_t - delta[None, :])).to(dtype), a_layout)
                dk = warpgroup_mma(ds16, q_tile, dk, is_async=True)
                dk = warpgroup_mma_wait(num_outstanding=0, deps=(dk,))
                mbarrier.arrive(empty.index(slot), count=1)
            offs_n = j * BLOCK_N + sub * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, acc_layout))
            d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
            _finish(dk * sm_scale, DK2, DK4, DK8, DK, offs_n, d, bh, Lk, HEAD_DIM, PERMUTED)
            _finish(dv, DV2, DV4, DV8, DV, offs_n, d, bh, Lk, HEAD_DIM, PERMUTED)

    @gluon.jit
    def _dkdv_kernel(q_desc, do_desc, k_desc, v_desc, LSE, DELTA, DK, DV, DK2, DV2, DK4, DV4, DK8, DV8,
                     IDXT, CNTT, ORDERT, sm_scale, qk_scale, Lq, Lk, n_qb, n_kb, n_items,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, REORDER: gl.constexpr,
                     PERMUTED: gl.constexpr = False):
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        dtype: gl.constexpr = q_desc.dtype
        FIRST: gl.constexpr = 0
        SECOND: gl.constexpr = 1
        pid = gl.program_id(0)
        bh = gl.program_id(1).to(gl.int64)
        q_bufs = gl.allocate_shared_memory(dtype, [2 * STAGES, 64, HEAD_DIM], q_desc.layout)
        do_bufs = gl.allocate_shared_memory(dtype, [2 * STAGES, 64, HEAD_DIM], do_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [2, 64, HEAD_DIM], v_desc.layout)
        kv_ready = barriers(2, 1)
        ready, empty = ring_barriers(2 * STAGES, 1)  # one ring of STAGES slots per consumer
        fence_async_shared()
        gl.warp_specialize(
            [(_dkdv_loader, (q_desc, do_desc, k_desc, v_desc, q_bufs, do_bufs, k_smem, v_smem, kv_ready, ready,
                             empty, IDXT, CNTT, ORDERT, bh, pid, Lq, Lk, n_qb, n_kb, n_items, BLOCK_M, BLOCK_N,
                             STAGES, REORDER)),
             (_dkdv_consumer, (q_bufs, do_bufs, k_smem, v_smem, kv_ready, ready, empty, LSE, DELTA, DK, DV,
                               DK2, DV2, DK4, DV4, DK8, DV8, IDXT, CNTT, ORDERT, bh, pid, sm_scale, qk_scale,
                               Lq, Lk, n_qb, n_kb, n_items, FIRST, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, REORDER,
                               PERMUTED)),
             (_dkdv_consumer, (q_bufs, do_bufs, k_smem, v_smem, kv_ready, ready, empty, LSE, DELTA, DK, DV,
                               DK2, DV2, DK4, DV4, DK8, DV8, IDXT, CNTT, ORDERT, bh, pid, sm_scale, qk_scale,
                               Lq, Lk, n_qb, n_kb, n_items, SECOND, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, REORDER,
                               PERMUTED))],
            [4, 4], [240, 240])


if HAVE_GLUON:

    @gluon.jit
    def _dq1_loader(q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_bufs, v_bufs, q_ready, ready, empty,
                    lst, n, bh, i, Lq, Lk, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
        """Producer: the query block's Q and dO once, then K, V of its level-1 key blocks in 64-key steps."""
        SPLIT: gl.constexpr = BLOCK_N // 64
        load_pair(q_desc, do_desc, (bh * Lq + i * BLOCK_M).to(gl.int32), q_ready, q_smem, do_smem)
        for it in range(n):
            slot = it % STAGES
            mbarrier.wait(empty.index(slot), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            j = gl.load(lst + it // SPLIT)
            key_row = (bh * Lk + j * BLOCK_N + (it % SPLIT) * 64).to(gl.int32)
            load_pair(k_desc, v_desc, key_row, ready.index(slot), k_bufs.index(slot), v_bufs.index(slot))

    @gluon.jit
    def _dq1_consumer(q_smem, do_smem, k_bufs, v_bufs, q_ready, ready, empty, LSE, DELTA, PARTIAL, DQ,
                      lst, n, bh, i, sm_scale, qk_scale, Lq, Lk,
                      C: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                      STAGES: gl.constexpr):
        """64 query rows: dQ += dS K over the level-1 steps, then + the pooled levels' partial, stored."""
        SPLIT: gl.constexpr = BLOCK_N // 64
        s_layout: gl.constexpr = wgmma_layout(64)
        acc_layout: gl.constexpr = wgmma_layout(HEAD_DIM)
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        dtype: gl.constexpr = q_smem.dtype
        offs_m = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, s_layout))
        mask_m = offs_m < Lq  # rows past Lq (next head / zero fill): lse = +inf gives p = 0
        lse = gl.load(LSE + bh * Lq + offs_m, mask=mask_m, other=float("inf"))
        delta = gl.load(DELTA + bh * Lq + offs_m, mask=mask_m, other=0.0)
        q = q_smem.slice(C * 64, 64, dim=0)
        do = do_smem.slice(C * 64, 64, dim=0)
        dq = gl.zeros([64, HEAD_DIM], gl.float32, layout=acc_layout)
        mbarrier.wait(q_ready, 0)
        for it in range(n):
            slot = it % STAGES
            mbarrier.wait(ready.index(slot), (it // STAGES) & 1)
            k_tile = k_bufs.index(slot)
            s = warpgroup_mma(q, k_tile.permute((1, 0)), gl.zeros([64, 64], gl.float32, layout=s_layout),
                              use_acc=False, is_async=True)
            dp = warpgroup_mma(do, v_bufs.index(slot).permute((1, 0)), gl.zeros([64, 64], gl.float32, layout=s_layout),
                               use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # dP stays on the tensor cores
            first_key = gl.load(lst + it // SPLIT) * BLOCK_N + (it % SPLIT) * 64
            if first_key + 64 > Lk:  # the head's partial last key block
                keys = first_key + gl.arange(0, 64, layout=gl.SliceLayout(0, s_layout))
                s = s + gl.where(keys < Lk, 0.0, float("-inf"))[None, :]
            p = gl.exp2(s * qk_scale - lse[:, None])
            dp = warpgroup_mma_wait(num_outstanding=0, deps=(dp,))
            ds16 = gl.convert_layout((p * (dp - delta[:, None])).to(dtype), a_layout)
            dq = warpgroup_mma(ds16, k_tile, dq, is_async=True)
            dq = warpgroup_mma_wait(num_outstanding=0, deps=(dq,))
            mbarrier.arrive(empty.index(slot), count=1)
        rows = i * BLOCK_M + C * 64 + gl.arange(0, 64, layout=gl.SliceLayout(1, acc_layout))
        d = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, acc_layout))
        offs = (bh * Lq + rows)[:, None] * HEAD_DIM + d[None, :]
        keep = (rows < Lq)[:, None]
        dq = dq * sm_scale + gl.load(PARTIAL + offs, mask=keep, other=0.0)
        gl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=keep)

    @gluon.jit
    def _dq1_kernel(q_desc, do_desc, k_desc, v_desc, LSE, DELTA, PARTIAL, DQ, IDX, CNT, ORDER,
                    sm_scale, qk_scale, Lq, Lk, n_qb, n_kb,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, REORDER: gl.constexpr):
        HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
        dtype: gl.constexpr = q_desc.dtype
        SPLIT: gl.constexpr = BLOCK_N // 64
        FIRST: gl.constexpr = 0
        SECOND: gl.constexpr = 1
        bh, i, row, lst = query_block(IDX, ORDER, n_qb, n_kb, REORDER)  # level-1 entries come first in lst
        n = gl.load(CNT + row * 4) * SPLIT
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
        do_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], do_desc.layout)
        k_bufs = gl.allocate_shared_memory(dtype, [STAGES, 64, HEAD_DIM], k_desc.layout)
        v_bufs = gl.allocate_shared_memory(dtype, [STAGES, 64, HEAD_DIM], v_desc.layout)
        q_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(q_ready, count=1)
        ready, empty = ring_barriers(STAGES, 2)  # both consumers read every key tile
        fence_async_shared()
        gl.warp_specialize(
            [(_dq1_loader, (q_desc, do_desc, k_desc, v_desc, q_smem, do_smem, k_bufs, v_bufs, q_ready, ready, empty,
                            lst, n, bh, i, Lq, Lk, BLOCK_M, BLOCK_N, STAGES)),
             (_dq1_consumer, (q_smem, do_smem, k_bufs, v_bufs, q_ready, ready, empty, LSE, DELTA, PARTIAL, DQ,
                              lst, n, bh, i, sm_scale, qk_scale, Lq, Lk, FIRST, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES)),
             (_dq1_consumer, (q_smem, do_smem, k_bufs, v_bufs, q_ready, ready, empty, LSE, DELTA, PARTIAL, DQ,
                              lst, n, bh, i, sm_scale, qk_scale, Lq, Lk, SECOND, BLOCK_M, BLOCK_N, HEAD_DIM,
                              STAGES))],
            [4, 4], [232, 232])


def launch_dkdv_gluon(q, k, v, do, lse, delta, pooled_grads, plan, block_m, block_n, sm_scale, permuted=False):
    """dK, dV of the level-1 pairs plus the folded pooled gradients; arguments as `launch_dkdv`
    (permuted: the pooled gradients in gluon_pooled_dq's column order)."""
    batch, heads, length_q, _ = q.shape
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    dk2, dv2, dk4, dv4, dk8, dv8 = pooled_grads
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    n_items = n_kb * (block_n // SUB)
    order = plan.order_t if plan.order_t is not None else plan.cnt_t  # placeholder pointer when unused
    _dkdv_kernel[(cdiv(n_items, 2), batch * heads)](
        descriptor(q, SUB), descriptor(do, SUB), descriptor(k, SUB), descriptor(v, SUB), lse, delta, dk, dv,
        dk2, dv2, dk4, dv4, dk8, dv8, plan.idx_t, plan.cnt_t, order,
        sm_scale, sm_scale * LOG2E, length_q, k.shape[2], n_qb, n_kb, n_items,
        BLOCK_M=block_m, BLOCK_N=block_n, STAGES=STAGES, REORDER=plan.order_t is not None, PERMUTED=permuted,
        num_warps=4,
    )
    return dk, dv


def supported_dq(q: torch.Tensor, block_m: int, block_n: int) -> bool:
    """Whether the Gluon level-1 dQ kernel runs: as `supported`, and two 64-row consumers per query block."""
    return supported(q, block_m, block_n) and block_m == 2 * SUB


def launch_dq1_gluon(q, k, v, do, lse, delta, plan, block_m, block_n, sm_scale, partial):
    """dQ = the level-1 pairs' dS K (this kernel) + `partial` (fp32, the pooled levels' dQ, already
    scaled by sm_scale: `triton_backward.launch_dq_triton(..., level1=False)`); in q's dtype."""
    batch, heads, length_q, _ = q.shape
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    dq = torch.empty_like(q)
    order = plan.order if plan.order is not None else plan.cnt  # placeholder pointer when unused
    _dq1_kernel[(n_qb, batch * heads)](
        descriptor(q, block_m), descriptor(do, block_m), descriptor(k, SUB), descriptor(v, SUB), lse, delta, partial, dq,
        plan.idx, plan.cnt, order, sm_scale, sm_scale * LOG2E, length_q, k.shape[2], n_qb, n_kb,
        BLOCK_M=block_m, BLOCK_N=block_n, STAGES=3, REORDER=plan.order is not None, num_warps=4,
    )
    return dq
