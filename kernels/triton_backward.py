"""Pyramid attention backward: Δ, a query-stationary pass, a key-stationary level-1 pass.

1. ``_delta_kernel``: Δ = rowsum(O ∘ dO) in fp32.
2. ``_bwd_dq_kernel`` (one program per query block, the forward's lists and tiles): recomputes
   P = exp2(qk·c + log2 n - LSE) and dS = P ∘ (dP - Δ) for every level, accumulates
   dQ = scale · dS K̄ in registers, and for the pooled levels 2/4/8 also the pooled-resolution
   gradients dV̄_s += Pᵀ dO and dK̄_s += scale · dSᵀ Q of the packed tile, added with fp32
   ``tl.atomic_add`` into [B, H, ceil(Lk/s), D] buffers.
3. ``_bwd_dkdv_kernel`` (one program per key block, every key block): exact dK, dV over the
   transposed level-1 list (no atomics), then folds the pooled gradients back onto member
   tokens: dK[t] += Σ_s dK̄_s[t // s] / n, n = min(s, Lk - (t//s)·s); same for V.

Why atomics for the pooled levels. The alternative, a key-stationary pass per pooled block,
must load the query block's Q and dO (4·block_m·D bytes) for each (query block, pooled block)
pair while doing 1/s of the arithmetic; at block_m = 128, block_n = 64 that is 512·D bytes per
pair against 96·D bytes (read K̄, V̄ tile, add dK̄, dV̄ in fp32) for a level-8 pair here, and the
atomics ride along a pass that runs anyway for dQ. Measured on an H200 at the Wan shape and
density 0.15 (benchmarks/NOTES.md): the atomics add 1.9 ms to a 3.8 ms dQ pass (1.1 ms to
4.0 ms since gluon_pooled_dq issues them); the key-stationary alternative's ~25 GB of Q/dO
re-reads were estimated at 4-5 ms. The cost:
pooled-level contributions to dK/dV are summed in a run-dependent order (fp32, differences at
rounding level); dQ and the level-1 parts of dK/dV are deterministic. Nothing re-expands pooled K/V to full length.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_forward import (
    LOG2E,
    _dot,
    _gathered_clean_tiles,
    _gathered_rows,
    _gathered_tile,
    _tma_entry_rows,
    _tma_entry_tile,
    _tma_level_tiles,
    clean_flags,
    dot_precision,
    level1_descriptors,
    level_descriptors,
    level_tiles,
)
from .triton_launch import cdiv, kernel


@kernel
def _delta_kernel(O, DO, DELTA, n_rows, HEAD_DIM: tl.constexpr, ROWS: tl.constexpr):
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    d = tl.arange(0, HEAD_DIM)
    m = (r < n_rows)[:, None]
    o = tl.load(O + r[:, None] * HEAD_DIM + d[None, :], mask=m, other=0.0).to(tl.float32)
    do = tl.load(DO + r[:, None] * HEAD_DIM + d[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(DELTA + r, tl.sum(o * do, axis=1), mask=r < n_rows)


@triton.jit
def _dq_step(q, do, lse, delta, dq, k, v, bias, qk_scale, DOT_PREC: tl.constexpr):
    """dQ of a query tile from one key tile, recomputing P from the saved LSE; returns P and dS
    too, for the pooled-level key/value gradients."""
    qk = _dot(q, tl.trans(k), DOT_PREC) * qk_scale + bias[None, :]
    p = tl.math.exp2(qk - lse[:, None])
    dp = _dot(do, tl.trans(v), DOT_PREC)
    ds = p * (dp - delta[:, None])
    dq += _dot(ds.to(k.dtype), k, DOT_PREC)
    return dq, p, ds


@triton.jit
def _dq_clean_step(q, do, lse, delta, dq, k, v, log2_n, qk_scale, DOT_PREC: tl.constexpr):
    """`_dq_step` for a tile of whole pooled rows (constant bias log2(n): one fused
    multiply-add per logit before the exponential)."""
    raw = _dot(q, tl.trans(k), DOT_PREC)
    p = tl.math.exp2(raw * qk_scale + (log2_n - lse)[:, None])
    dp = _dot(do, tl.trans(v), DOT_PREC)
    ds = p * (dp - delta[:, None])
    dq += _dot(ds.to(k.dtype), k, DOT_PREC)
    return dq, p, ds


@triton.jit
def _add_pooled_grads(DKB, DVB, q, do, p, ds, r, valid, bh, Lk, d, sm_scale,
                      S: tl.constexpr, HEAD_DIM: tl.constexpr, DOT_PREC: tl.constexpr):
    """dV̄ += Pᵀ dO and dK̄ += scale · dSᵀ Q of one key tile, into the fp32 buffers of level s."""
    Ls = (Lk + S - 1) // S
    dv_part = _dot(tl.trans(p.to(do.dtype)), do, DOT_PREC)
    dk_part = _dot(tl.trans(ds.to(q.dtype)), q, DOT_PREC) * sm_scale
    p_off = bh * Ls * HEAD_DIM + r[:, None] * HEAD_DIM + d[None, :]
    tl.atomic_add(DVB + p_off, dv_part, mask=valid[:, None], sem="relaxed")
    tl.atomic_add(DKB + p_off, dk_part, mask=valid[:, None], sem="relaxed")


@triton.jit
def _dq_level(
    q, do, lse, delta, dq, KB, VB, DKB, DVB, list_ptr, cnt, bh, Lk, sm_scale, qk_scale, d,
    S: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, ATOMICS: tl.constexpr, CLEAN: tl.constexpr,
):
    """dQ of one query tile over one level's packed rows (`_gathered_tile`); pooled levels also
    add dK̄, dV̄ (ATOMICS=False drops those, for timing only: the gradients are then wrong).
    With CLEAN, full tiles of whole pooled rows take `_dq_clean_step` (as in the forward)."""
    n_rows = cnt * (BLOCK_N // S)
    first_masked = 0
    if CLEAN:
        first_masked = _gathered_clean_tiles(list_ptr, cnt, Lk, S, BLOCK_N, TILE)
        for it in tl.range(0, first_masked, num_stages=STAGES):
            k, v, r = _gathered_rows(KB, VB, list_ptr, it * TILE, bh, Lk, d, S, BLOCK_N, HEAD_DIM, TILE)
            dq, p, ds = _dq_clean_step(q, do, lse, delta, dq, k, v, tl.log2(S * 1.0), qk_scale, DOT_PREC)
            if S > 1 and ATOMICS:
                _add_pooled_grads(DKB, DVB, q, do, p, ds, r, r >= 0, bh, Lk, d, sm_scale, S, HEAD_DIM, DOT_PREC)
    for t0 in tl.range(first_masked * TILE, n_rows, TILE, num_stages=1 if CLEAN else STAGES):
        k, v, r, valid, bias = _gathered_tile(KB, VB, list_ptr, t0, n_rows, bh, Lk, d, S, BLOCK_N, HEAD_DIM, TILE)
        dq, p, ds = _dq_step(q, do, lse, delta, dq, k, v, bias, qk_scale, DOT_PREC)
        if S > 1 and ATOMICS:
            _add_pooled_grads(DKB, DVB, q, do, p, ds, r, valid, bh, Lk, d, sm_scale, S, HEAD_DIM, DOT_PREC)
    return dq


@triton.jit
def _dq_level_tma(
    q, do, lse, delta, dq, KD, VD, DKB, DVB, list_ptr, cnt, bh, Lk, sm_scale, qk_scale, d,
    S: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, ATOMICS: tl.constexpr, CLEAN: tl.constexpr,
):
    """`_dq_level` for a level whose entries load by TMA, tile by tile (`_tma_entry_tile`); with
    CLEAN, tiles of whole key blocks take `_dq_clean_step` (as the forward's `_clean_step`)."""
    first_masked, n_tiles = _tma_level_tiles(list_ptr, cnt, Lk, S, BLOCK_N, TILE, CLEAN)
    if CLEAN:
        for it in tl.range(0, first_masked, num_stages=STAGES):
            k, v, first = _tma_entry_rows(KD, VD, list_ptr, it, bh, Lk, S, BLOCK_N, TILE)
            dq, p, ds = _dq_clean_step(q, do, lse, delta, dq, k, v, tl.log2(S * 1.0), qk_scale, DOT_PREC)
            if S > 1 and ATOMICS:
                r = first + tl.arange(0, TILE)
                _add_pooled_grads(DKB, DVB, q, do, p, ds, r, r < (Lk + S - 1) // S, bh, Lk, d, sm_scale, S,
                                  HEAD_DIM, DOT_PREC)
    for it in tl.range(first_masked, n_tiles, num_stages=1 if CLEAN else STAGES):
        k, v, r, valid, bias = _tma_entry_tile(KD, VD, list_ptr, it, bh, Lk, S, BLOCK_N, TILE)
        dq, p, ds = _dq_step(q, do, lse, delta, dq, k, v, bias, qk_scale, DOT_PREC)
        if S > 1 and ATOMICS:
            _add_pooled_grads(DKB, DVB, q, do, p, ds, r, valid, bh, Lk, d, sm_scale, S, HEAD_DIM, DOT_PREC)
    return dq


@triton.jit
def _dq_any_level(
    q, do, lse, delta, dq, KB, VB, KD, VD, DKB, DVB, list_ptr, cnt, bh, Lk, sm_scale, qk_scale, d,
    S: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, ATOMICS: tl.constexpr, USE_TMA: tl.constexpr,
    CLEAN: tl.constexpr,
):
    if USE_TMA:
        return _dq_level_tma(q, do, lse, delta, dq, KD, VD, DKB, DVB, list_ptr, cnt, bh, Lk, sm_scale, qk_scale, d,
                             S, BLOCK_N, HEAD_DIM, TILE, STAGES, DOT_PREC, ATOMICS, CLEAN)
    else:
        return _dq_level(q, do, lse, delta, dq, KB, VB, DKB, DVB, list_ptr, cnt, bh, Lk, sm_scale, qk_scale, d,
                         S, BLOCK_N, HEAD_DIM, TILE, STAGES, DOT_PREC, ATOMICS, CLEAN)


@kernel
def _bwd_dq_kernel(
    Q, K1, V1, K2, V2, K4, V4, K8, V8, K1D, V1D, K2D, V2D, K4D, V4D, K8D, V8D,
    DO, LSE, DELTA, DQ, DK2, DV2, DK4, DV4, DK8, DV8,
    IDX, CNT, ORDER,
    sm_scale, qk_scale, Lq, Lk, n_qb, n_kb,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    TILE1: tl.constexpr, TILE2: tl.constexpr, TILE4: tl.constexpr, TILE8: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, TMA1: tl.constexpr, TMA2: tl.constexpr,
    TMA4: tl.constexpr, TMA8: tl.constexpr, ATOMICS: tl.constexpr, REORDER: tl.constexpr,
    CLEAN1: tl.constexpr, CLEAN2: tl.constexpr, CLEAN4: tl.constexpr, CLEAN8: tl.constexpr,
    LEVEL1: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    if REORDER:
        i = tl.load(ORDER + bh * n_qb + pid)
    else:
        i = pid
    row = bh * n_qb + i
    offs_m = i * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < Lq
    q_off = bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + d[None, :]
    q = tl.load(Q + q_off, mask=mask_m[:, None], other=0.0)
    do = tl.load(DO + q_off, mask=mask_m[:, None], other=0.0)
    lse = tl.load(LSE + bh * Lq + offs_m, mask=mask_m, other=float("inf"))
    delta = tl.load(DELTA + bh * Lq + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lst = IDX + row * n_kb
    c1 = tl.load(CNT + row * 4 + 0)
    c2 = tl.load(CNT + row * 4 + 1)
    c4 = tl.load(CNT + row * 4 + 2)
    c8 = tl.load(CNT + row * 4 + 3)
    if LEVEL1:  # else the Gluon kernel does level 1 and adds this pass's (fp32) result
        dq = _dq_any_level(q, do, lse, delta, dq, K1, V1, K1D, V1D, K1, V1, lst, c1, bh, Lk, sm_scale, qk_scale, d,
                           1, BLOCK_N, HEAD_DIM, TILE1, STAGES, DOT_PREC, ATOMICS, TMA1, CLEAN1)
    dq = _dq_any_level(q, do, lse, delta, dq, K2, V2, K2D, V2D, DK2, DV2, lst + c1, c2, bh, Lk, sm_scale, qk_scale,
                       d, 2, BLOCK_N, HEAD_DIM, TILE2, STAGES, DOT_PREC, ATOMICS, TMA2, CLEAN2)
    dq = _dq_any_level(q, do, lse, delta, dq, K4, V4, K4D, V4D, DK4, DV4, lst + c1 + c2, c4, bh, Lk, sm_scale,
                       qk_scale, d, 4, BLOCK_N, HEAD_DIM, TILE4, STAGES, DOT_PREC, ATOMICS, TMA4, CLEAN4)
    dq = _dq_any_level(q, do, lse, delta, dq, K8, V8, K8D, V8D, DK8, DV8, lst + c1 + c2 + c4, c8, bh, Lk, sm_scale,
                       qk_scale, d, 8, BLOCK_N, HEAD_DIM, TILE8, STAGES, DOT_PREC, ATOMICS, TMA8, CLEAN8)
    tl.store(DQ + q_off, (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask_m[:, None])


@triton.jit
def pooled_column(d, PERMUTED: tl.constexpr):
    """Column of the pooled-gradient buffers that holds column d: with PERMUTED, the order the
    Gluon pooled-level dQ kernel writes (four consecutive fp32 per thread's 16-byte atomic,
    `gluon_pooled_dq._add_to_level`), a fixed permutation within each 16 columns."""
    if PERMUTED:
        return 16 * (d // 16) + 4 * ((d % 8) // 2) + 2 * ((d // 8) % 2) + d % 2
    return d


@triton.jit
def _fold_level(dk, dv, DKB, DVB, offs_n, mask_n, bh, Lk, d, S: tl.constexpr, HEAD_DIM: tl.constexpr,
                PERMUTED: tl.constexpr):
    Ls = (Lk + S - 1) // S
    r = offs_n // S
    inv_n = 1.0 / tl.maximum(tl.minimum(Lk - r * S, S), 1).to(tl.float32)
    p_off = bh * Ls * HEAD_DIM + r[:, None] * HEAD_DIM + pooled_column(d, PERMUTED)[None, :]
    dk += tl.load(DKB + p_off, mask=mask_n[:, None], other=0.0) * inv_n[:, None]
    dv += tl.load(DVB + p_off, mask=mask_n[:, None], other=0.0) * inv_n[:, None]
    return dk, dv


@kernel
def _bwd_dkdv_kernel(
    Q, K, V, DO, QD, DOD, LSE, DELTA, DK, DV, DK2, DV2, DK4, DV4, DK8, DV8,
    IDXT, CNTT, ORDERT,
    sm_scale, qk_scale, Lq, Lk, n_qb, n_kb,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    KSUB: tl.constexpr, MSUB: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr, REORDER: tl.constexpr,
    PERMUTED: tl.constexpr,
):
    SPLIT = BLOCK_N // KSUB
    NSUB = BLOCK_M // MSUB
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    if REORDER:
        j = tl.load(ORDERT + bh * n_kb + pid // SPLIT)
    else:
        j = pid // SPLIT
    col = bh * n_kb + j
    offs_n = j * BLOCK_N + (pid % SPLIT) * KSUB + tl.arange(0, KSUB)
    d = tl.arange(0, HEAD_DIM)
    mask_n = offs_n < Lk
    kv_off = bh * Lk * HEAD_DIM + offs_n[:, None] * HEAD_DIM + d[None, :]
    k = tl.load(K + kv_off, mask=mask_n[:, None], other=0.0)
    v = tl.load(V + kv_off, mask=mask_n[:, None], other=0.0)
    dk = tl.zeros([KSUB, HEAD_DIM], tl.float32)
    dv = tl.zeros([KSUB, HEAD_DIM], tl.float32)
    cnt = tl.load(CNTT + col)
    list_base = IDXT + col * n_qb
    q_base = bh * Lq * HEAD_DIM
    for it in tl.range(0, cnt * NSUB, num_stages=STAGES):
        i = tl.load(list_base + it // NSUB)
        offs_m = i * BLOCK_M + (it % NSUB) * MSUB + tl.arange(0, MSUB)
        mask_m = offs_m < Lq
        if USE_TMA:  # rows past Lq (next head / zero fill) are neutralised by lse = +inf
            row = (bh * Lq + i * BLOCK_M + (it % NSUB) * MSUB).to(tl.int32)
            q = QD.load([row, 0])
            do = DOD.load([row, 0])
        else:
            q_off = q_base + offs_m[:, None] * HEAD_DIM + d[None, :]
            q = tl.load(Q + q_off, mask=mask_m[:, None], other=0.0)
            do = tl.load(DO + q_off, mask=mask_m[:, None], other=0.0)
        lse = tl.load(LSE + bh * Lq + offs_m, mask=mask_m, other=float("inf"))
        delta = tl.load(DELTA + bh * Lq + offs_m, mask=mask_m, other=0.0)
        qk_t = _dot(k, tl.trans(q), DOT_PREC) * qk_scale
        p_t = tl.math.exp2(qk_t - lse[None, :])
        dv += _dot(p_t.to(do.dtype), do, DOT_PREC)
        dp_t = _dot(v, tl.trans(do), DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += _dot(ds_t.to(q.dtype), q, DOT_PREC)
    dk = dk * sm_scale
    # fold the pooled-level gradients back onto member tokens: d(mean)/d(member) = 1/n
    dk, dv = _fold_level(dk, dv, DK2, DV2, offs_n, mask_n, bh, Lk, d, 2, HEAD_DIM, PERMUTED)
    dk, dv = _fold_level(dk, dv, DK4, DV4, offs_n, mask_n, bh, Lk, d, 4, HEAD_DIM, PERMUTED)
    dk, dv = _fold_level(dk, dv, DK8, DV8, offs_n, mask_n, bh, Lk, d, 8, HEAD_DIM, PERMUTED)
    tl.store(DK + kv_off, dk.to(DK.dtype.element_ty), mask=mask_n[:, None])
    tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=mask_n[:, None])


def pooled_grad_buffers(k: torch.Tensor):
    """Zeroed fp32 dK̄_s, dV̄_s [B, H, ceil(Lk/s), D] for s = 2, 4, 8, in one allocation."""
    batch, heads, length_k, dim = k.shape
    sizes = [cdiv(length_k, s) for s in (2, 4, 8)]
    n = batch * heads * dim
    flat = torch.zeros(2 * n * sum(sizes), dtype=torch.float32, device=k.device)
    bufs, start = [], 0
    for s_len in sizes:
        for _ in range(2):
            bufs.append(flat[start:start + n * s_len].view(batch, heads, s_len, dim))
            start += n * s_len
    return bufs


def launch_delta(out, do):
    batch, heads, length_q, dim = out.shape
    delta = torch.empty((batch, heads, length_q), dtype=torch.float32, device=out.device)
    rows, total = 64, batch * heads * length_q
    _delta_kernel[(cdiv(total, rows),)](out, do, delta, total, HEAD_DIM=dim, ROWS=rows, num_warps=4)
    return delta


def pooled_by_gluon(q, block_m, block_n, cfg) -> bool:
    """Whether `launch_dq` runs the pooled levels by gluon_pooled_dq, which leaves the pooled
    gradients in its permuted column order (`pooled_column`)."""
    if not (cfg.dq_gluon and cfg.dq_pooled_gluon):
        return False
    from . import gluon_backward

    return gluon_backward.supported_dq(q, block_m, block_n)


def launch_dq(q, k, v, do, lse, delta, pyramid, pooled_grads, plan, block_m, block_n, sm_scale, cfg):
    """dQ (q's dtype); accumulates the pooled levels' dK̄/dV̄ into pooled_grads on the way.

    With cfg.dq_gluon on a Hopper GPU the level-1 pairs go to the Gluon kernel, which adds the
    pooled levels' result (fp32; this module's kernel, or gluon_pooled_dq's with
    cfg.dq_pooled_gluon) to its own."""
    if cfg.dq_gluon:
        from . import gluon_backward, gluon_pooled_dq

        if gluon_backward.supported_dq(q, block_m, block_n):
            if pooled_by_gluon(q, block_m, block_n, cfg):
                partial = gluon_pooled_dq.launch_pooled_dq_gluon(
                    q, k, do, lse, delta, pyramid, pooled_grads, plan, block_m, block_n, sm_scale,
                    stages=cfg.dq_pooled_gluon_stages, regs=cfg.dq_pooled_gluon_regs, atomics=cfg.dq_pooled_atomics,
                    pipelined=cfg.dq_pooled_gluon_pipelined)
            else:
                partial = launch_dq_triton(q, k, v, do, lse, delta, pyramid, pooled_grads, plan, block_m, block_n,
                                           sm_scale, cfg, level1=False)
            return gluon_backward.launch_dq1_gluon(q, k, v, do, lse, delta, plan, block_m, block_n, sm_scale, partial)
    return launch_dq_triton(q, k, v, do, lse, delta, pyramid, pooled_grads, plan, block_m, block_n, sm_scale, cfg)


def launch_dq_triton(q, k, v, do, lse, delta, pyramid, pooled_grads, plan, block_m, block_n, sm_scale, cfg,
                     level1=True):
    """The Triton dQ pass; level1=False leaves the level-1 pairs out and returns fp32."""
    batch, heads, length_q, dim = q.shape
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    (k2, v2), (k4, v4), (k8, v8) = pyramid
    dk2, dv2, dk4, dv4, dk8, dv8 = pooled_grads
    dq = torch.empty_like(q, dtype=q.dtype if level1 else torch.float32)
    tiles = level_tiles(q.dtype, block_n, cfg.dq_tiles, cfg.dq_tma, cfg.dq_pooled_tma)
    (k1d, v1d), (k2d, v2d), (k4d, v4d), (k8d, v8d) = level_descriptors(k, v, pyramid, tiles)
    _bwd_dq_kernel[(n_qb, batch * heads)](
        q, k, v, k2, v2, k4, v4, k8, v8, k1d, v1d, k2d, v2d, k4d, v4d, k8d, v8d,
        do, lse, delta, dq, dk2, dv2, dk4, dv4, dk8, dv8,
        plan.idx, plan.cnt, plan.order,
        sm_scale, sm_scale * LOG2E, length_q, k.shape[2], n_qb, n_kb,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=dim,
        TILE1=tiles[0][1], TILE2=tiles[1][1], TILE4=tiles[2][1], TILE8=tiles[3][1],
        STAGES=cfg.dq_stages, DOT_PREC=dot_precision(q), TMA1=tiles[0][0], TMA2=tiles[1][0],
        TMA4=tiles[2][0], TMA8=tiles[3][0], ATOMICS=cfg.dq_pooled_atomics,
        REORDER=plan.order is not None, **clean_flags(cfg.dq_clean_levels, sm_scale), LEVEL1=level1,
        num_warps=cfg.dq_warps,
    )
    return dq


def launch_dkdv(q, k, v, do, lse, delta, pooled_grads, plan, block_m, block_n, sm_scale, cfg, permuted=None):
    """dK, dV: the level-1 pairs, then the pooled gradients folded onto member keys, read in the
    column order `launch_dq` left them in (`pooled_by_gluon`; `permuted` overrides it)."""
    if permuted is None:
        permuted = pooled_by_gluon(q, block_m, block_n, cfg)
    if cfg.dkdv_gluon:
        from . import gluon_backward

        if gluon_backward.supported(q, block_m, block_n):
            return gluon_backward.launch_dkdv_gluon(q, k, v, do, lse, delta, pooled_grads, plan, block_m, block_n,
                                                    sm_scale, permuted)
    batch, heads, length_q, dim = q.shape
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    dk2, dv2, dk4, dv4, dk8, dv8 = pooled_grads
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    ksub = min(cfg.dkdv_ksub, block_n)
    msub = min(cfg.dkdv_msub, block_m)
    qd, dod = level1_descriptors(q, do, msub, block_m, cfg.dkdv_tma)
    _bwd_dkdv_kernel[(n_kb * (block_n // ksub), batch * heads)](
        q, k, v, do, qd, dod, lse, delta, dk, dv, dk2, dv2, dk4, dv4, dk8, dv8,
        plan.idx_t, plan.cnt_t, plan.order_t,
        sm_scale, sm_scale * LOG2E, length_q, k.shape[2], n_qb, n_kb,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=dim, KSUB=ksub, MSUB=msub,
        STAGES=cfg.dkdv_stages, DOT_PREC=dot_precision(q), USE_TMA=qd is not None,
        REORDER=plan.order_t is not None, PERMUTED=permuted, num_warps=cfg.dkdv_warps,
    )
    return dk, dv


def pyramid_backward(q, k, v, out, lse, do, pyramid, plan, block_m, block_n, sm_scale, cfg):
    """dq, dk, dv (input dtype) for contiguous tensors; `pyramid`, `plan` as in the forward."""
    delta = launch_delta(out, do)
    pooled = pooled_grad_buffers(k)
    dq = launch_dq(q, k, v, do, lse, delta, pyramid, pooled, plan, block_m, block_n, sm_scale, cfg)
    dk, dv = launch_dkdv(q, k, v, do, lse, delta, pooled, plan, block_m, block_n, sm_scale, cfg)
    return dq, dk, dv
