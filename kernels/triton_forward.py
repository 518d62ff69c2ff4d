"""Pyramid attention forward: one launch, all levels, online softmax in the exp2 domain.

One program per (query block, head), ordered heaviest block first within each head. For each
level s (``_fwd_level`` inlined four times, each with its own K/V base pointer) the program walks the
level's entries of its compact list as one concatenated sequence of pooled rows, TILE_s rows at a
time: row t belongs to entry e = t // R (R = block_n / s pooled rows per key block) and is pooled
row idx[e] * R + t % R. So several small pooled blocks share one tensor-core tile (eight 8-row
level-8 blocks of block_n = 64 fill a 64-row tile), and a level-s block costs 1/s of a level-1
block. Pooled row r stands for n_r = min(s, Lk - r*s) tokens: its logit gets + log2(n_r); rows
past the pooled length and list padding get -inf; tiles of whole pooled rows (TMA or gathered)
skip that per-column bias (`_clean_step`), and may go two per softmax update
(`_clean_pair_step`). Saves the base-2 log-sum-exp for the backward.
A query block with an empty list writes zeros (and LSE 0, never read).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import kernel

LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr, acc=None):
    """tl.dot (plus acc); DOT_PREC "cpu" (interpreter) multiplies in fp32: its half-precision
    dot is wrong."""
    if DOT_PREC == "cpu":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc, input_precision=DOT_PREC)


@triton.jit
def _row_bias(r, valid, Lk, S: tl.constexpr):
    """Logit bias of pooled rows r of level s: log2 of the tokens each stands for (0 on level 1),
    -inf where not valid (list padding, rows past this head's pooled length)."""
    if S == 1:
        return tl.where(valid, 0.0, float("-inf"))
    else:
        n = tl.maximum(tl.minimum(Lk - r * S, S), 1).to(tl.float32)
        return tl.where(valid, tl.log2(n), float("-inf"))


@triton.jit
def _gathered_tile(KB, VB, list_ptr, t0, n_rows, bh, Lk, d,
                   S: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr):
    """Rows t0 .. t0+TILE of a level's entries laid end to end (row t is pooled row
    idx[t // R] * R + t % R, R = block_n / s), gathered by pointers: several small pooled blocks
    share one tile. Returns K, V [TILE, D], the pooled rows, their validity and logit bias."""
    R = BLOCK_N // S
    Ls = (Lk + S - 1) // S
    t = t0 + tl.arange(0, TILE)
    in_list = t < n_rows
    blk = tl.load(list_ptr + t // R, mask=in_list, other=0)
    r = blk * R + t % R
    valid = in_list & (r < Ls)
    kv_off = bh * Ls * HEAD_DIM + r[:, None] * HEAD_DIM + d[None, :]
    k = tl.load(KB + kv_off, mask=valid[:, None], other=0.0)
    v = tl.load(VB + kv_off, mask=valid[:, None], other=0.0)
    return k, v, r, valid, _row_bias(r, valid, Lk, S)


@triton.jit
def _gathered_rows(KB, VB, list_ptr, t0, bh, Lk, d,
                   S: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr):
    """`_gathered_tile` for a tile of whole pooled rows (no masks, no bias): K, V [TILE, D] and
    the pooled rows."""
    R = BLOCK_N // S
    Ls = (Lk + S - 1) // S
    t = t0 + tl.arange(0, TILE)
    r = tl.load(list_ptr + t // R) * R + t % R
    kv_off = bh * Ls * HEAD_DIM + r[:, None] * HEAD_DIM + d[None, :]
    return tl.load(KB + kv_off), tl.load(VB + kv_off), r


@triton.jit
def _tma_entry_rows(KD, VD, list_ptr, it, bh, Lk, S: tl.constexpr, BLOCK_N: tl.constexpr, TILE: tl.constexpr):
    """Tile `it` of a level whose entries load by TMA: each entry's R = block_n / s pooled rows
    are contiguous, taken TILE (<= R) at a time. Returns K, V [TILE, D] and the tile's first
    pooled row; KD/VD describe level s as [B*H*ceil(Lk/s), D], so rows past this head's pooled
    length hold the next head's keys (or zero fill past the tensor)."""
    R: tl.constexpr = BLOCK_N // S
    SUB: tl.constexpr = R // TILE
    Ls = (Lk + S - 1) // S
    first = tl.load(list_ptr + it // SUB) * R + (it % SUB) * TILE
    k = KD.load([(bh * Ls + first).to(tl.int32), 0])
    v = VD.load([(bh * Ls + first).to(tl.int32), 0])
    return k, v, first


@triton.jit
def _tma_entry_tile(KD, VD, list_ptr, it, bh, Lk, S: tl.constexpr, BLOCK_N: tl.constexpr, TILE: tl.constexpr):
    """`_tma_entry_rows` plus the pooled rows, their validity (rows past this head's pooled
    length are not) and logit bias."""
    k, v, first = _tma_entry_rows(KD, VD, list_ptr, it, bh, Lk, S, BLOCK_N, TILE)
    r = first + tl.arange(0, TILE)
    valid = r < (Lk + S - 1) // S
    return k, v, r, valid, _row_bias(r, valid, Lk, S)


@triton.jit
def _softmax_step(q, k, v, bias, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """Online-softmax update of a query tile's running max, sum and output with one key tile."""
    qk = _dot(q, tl.trans(k), DOT_PREC) * qk_scale + bias[None, :]
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PREC)
    return m_new, l_i, acc


@triton.jit
def _clean_step(q, k, v, log2_n, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """`_softmax_step` for a tile of whole pooled rows (every row valid, standing for n tokens):
    the bias is the constant log2(n), so the max is taken on the raw products and scale, bias
    and shift are one fused multiply-add per logit (qk_scale > 0). The loop is bound by
    instruction issue as much as by the tensor cores, so each op per logit counts."""
    raw = _dot(q, tl.trans(k), DOT_PREC)
    m_new = tl.maximum(m_i, tl.max(raw, 1) * qk_scale + log2_n)
    p = tl.math.exp2(raw * qk_scale + (log2_n - m_new)[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, DOT_PREC)
    return m_new, l_i, acc


@triton.jit
def _clean_pair_step(q, ka, va, kb, vb, log2_n, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """`_clean_step` over two key tiles with one softmax update: the running max, the rescale
    of the output and the row sums are paid once per pair. Narrow pooled tiles (32 rows) spend
    as many ops rescaling the [BLOCK_M, D] output as on their logits."""
    raw_a = _dot(q, tl.trans(ka), DOT_PREC)
    raw_b = _dot(q, tl.trans(kb), DOT_PREC)
    m_new = tl.maximum(m_i, tl.maximum(tl.max(raw_a, 1), tl.max(raw_b, 1)) * qk_scale + log2_n)
    shift = (log2_n - m_new)[:, None]
    p_a = tl.math.exp2(raw_a * qk_scale + shift)
    p_b = tl.math.exp2(raw_b * qk_scale + shift)
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p_a, 1) + tl.sum(p_b, 1)
    acc = _dot(p_a.to(va.dtype), va, DOT_PREC, acc * alpha[:, None])
    acc = _dot(p_b.to(vb.dtype), vb, DOT_PREC, acc)
    return m_new, l_i, acc


@triton.jit
def _gathered_clean_tiles(list_ptr, cnt, Lk, S: tl.constexpr, BLOCK_N: tl.constexpr, TILE: tl.constexpr):
    """Leading tiles of a gathered level made of whole pooled rows only: every entry but a
    partial last key block (lists ascend: it can only be the last entry), full tiles only."""
    R: tl.constexpr = BLOCK_N // S
    last = tl.load(list_ptr + tl.maximum(cnt - 1, 0), mask=cnt > 0, other=0)
    whole = tl.where((cnt > 0) & ((last + 1) * BLOCK_N > Lk), cnt - 1, cnt)
    return (whole * R) // TILE


@triton.jit
def _tma_level_tiles(list_ptr, cnt, Lk, S: tl.constexpr, BLOCK_N: tl.constexpr, TILE: tl.constexpr,
                     CLEAN: tl.constexpr):
    """(first tile that needs the masked step, tile count) of a TMA level's cnt entries. With
    CLEAN every tile is clean unless the head's partial last key block is listed (lists ascend:
    it is then the last entry); without, every tile is masked."""
    SUB: tl.constexpr = (BLOCK_N // S) // TILE
    n_tiles = cnt * SUB
    if CLEAN:
        last = tl.load(list_ptr + tl.maximum(cnt - 1, 0), mask=cnt > 0, other=0)
        partial = (cnt > 0) & ((last + 1) * BLOCK_N > Lk)
        return n_tiles - tl.where(partial, SUB, 0), n_tiles
    else:
        return 0, n_tiles


@triton.jit
def _fwd_level(
    q, m_i, l_i, acc, KB, VB, list_ptr, cnt, bh, Lk, qk_scale, d,
    S: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, CLEAN: tl.constexpr, PAIR: tl.constexpr,
):
    """One level over the packed pooled rows of its entries (`_gathered_tile`); with CLEAN the
    full tiles of whole pooled rows take the bias-free step, with PAIR two at a time."""
    n_rows = cnt * (BLOCK_N // S)
    first_masked = 0
    if CLEAN:
        first_masked = _gathered_clean_tiles(list_ptr, cnt, Lk, S, BLOCK_N, TILE)
        log2_n = tl.log2(S * 1.0)
        n_pairs = first_masked // 2 if PAIR else 0
        for it in tl.range(0, n_pairs, num_stages=STAGES):
            ka, va, _ = _gathered_rows(KB, VB, list_ptr, 2 * it * TILE, bh, Lk, d, S, BLOCK_N, HEAD_DIM, TILE)
            kb, vb, _ = _gathered_rows(KB, VB, list_ptr, (2 * it + 1) * TILE, bh, Lk, d, S, BLOCK_N, HEAD_DIM, TILE)
            m_i, l_i, acc = _clean_pair_step(q, ka, va, kb, vb, log2_n, m_i, l_i, acc, qk_scale, DOT_PREC)
        for it in tl.range(2 * n_pairs, first_masked, num_stages=1 if PAIR else STAGES):
            k, v, _ = _gathered_rows(KB, VB, list_ptr, it * TILE, bh, Lk, d, S, BLOCK_N, HEAD_DIM, TILE)
            m_i, l_i, acc = _clean_step(q, k, v, log2_n, m_i, l_i, acc, qk_scale, DOT_PREC)
    for t0 in tl.range(first_masked * TILE, n_rows, TILE, num_stages=1 if CLEAN else STAGES):
        k, v, r, valid, bias = _gathered_tile(KB, VB, list_ptr, t0, n_rows, bh, Lk, d, S, BLOCK_N, HEAD_DIM, TILE)
        m_i, l_i, acc = _softmax_step(q, k, v, bias, m_i, l_i, acc, qk_scale, DOT_PREC)
    return m_i, l_i, acc


@triton.jit
def _fwd_level_tma(
    q, m_i, l_i, acc, KD, VD, list_ptr, cnt, bh, Lk, qk_scale,
    S: tl.constexpr, BLOCK_N: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr, DOT_PREC: tl.constexpr,
    CLEAN: tl.constexpr, PAIR: tl.constexpr,
):
    """One level with tensor-memory-accelerator loads, tile by tile (`_tma_entry_tile`); with
    CLEAN, tiles of whole key blocks take `_clean_step` (with PAIR two tiles per softmax update)
    and only a partial last block is masked."""
    first_masked, n_tiles = _tma_level_tiles(list_ptr, cnt, Lk, S, BLOCK_N, TILE, CLEAN)
    if CLEAN:
        n_pairs = first_masked // 2 if PAIR else 0
        for it in tl.range(0, n_pairs, num_stages=STAGES):
            ka, va, _ = _tma_entry_rows(KD, VD, list_ptr, 2 * it, bh, Lk, S, BLOCK_N, TILE)
            kb, vb, _ = _tma_entry_rows(KD, VD, list_ptr, 2 * it + 1, bh, Lk, S, BLOCK_N, TILE)
            m_i, l_i, acc = _clean_pair_step(q, ka, va, kb, vb, tl.log2(S * 1.0), m_i, l_i, acc, qk_scale, DOT_PREC)
        for it in tl.range(2 * n_pairs, first_masked, num_stages=1 if PAIR else STAGES):
            k, v, first = _tma_entry_rows(KD, VD, list_ptr, it, bh, Lk, S, BLOCK_N, TILE)
            m_i, l_i, acc = _clean_step(q, k, v, tl.log2(S * 1.0), m_i, l_i, acc, qk_scale, DOT_PREC)
    for it in tl.range(first_masked, n_tiles, num_stages=1 if CLEAN else STAGES):
        k, v, r, valid, bias = _tma_entry_tile(KD, VD, list_ptr, it, bh, Lk, S, BLOCK_N, TILE)
        m_i, l_i, acc = _softmax_step(q, k, v, bias, m_i, l_i, acc, qk_scale, DOT_PREC)
    return m_i, l_i, acc


@triton.jit
def _fwd_any_level(
    q, m_i, l_i, acc, KB, VB, KD, VD, list_ptr, cnt, bh, Lk, qk_scale, d,
    S: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TILE: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, USE_TMA: tl.constexpr, CLEAN: tl.constexpr,
    PAIR: tl.constexpr,
):
    if USE_TMA:
        return _fwd_level_tma(q, m_i, l_i, acc, KD, VD, list_ptr, cnt, bh, Lk, qk_scale,
                              S, BLOCK_N, TILE, STAGES, DOT_PREC, CLEAN, PAIR)
    else:
        return _fwd_level(q, m_i, l_i, acc, KB, VB, list_ptr, cnt, bh, Lk, qk_scale, d,
                          S, BLOCK_N, HEAD_DIM, TILE, STAGES, DOT_PREC, CLEAN, PAIR)


@kernel
def _pyramid_fwd_kernel(
    Q, QD, K1, V1, K2, V2, K4, V4, K8, V8, K1D, V1D, K2D, V2D, K4D, V4D, K8D, V8D,
    IDX, CNT, ORDER, OUT, LSE,
    qk_scale, Lq, Lk, n_qb, n_kb,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    TILE1: tl.constexpr, TILE2: tl.constexpr, TILE4: tl.constexpr, TILE8: tl.constexpr,
    STAGES: tl.constexpr, DOT_PREC: tl.constexpr, TMA1: tl.constexpr, TMA2: tl.constexpr,
    TMA4: tl.constexpr, TMA8: tl.constexpr, REORDER: tl.constexpr, Q_TMA: tl.constexpr,
    CLEAN1: tl.constexpr, CLEAN2: tl.constexpr, CLEAN4: tl.constexpr, CLEAN8: tl.constexpr,
    PAIR1: tl.constexpr, PAIR2: tl.constexpr, PAIR4: tl.constexpr, PAIR8: tl.constexpr,
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
    if Q_TMA:  # rows past Lq (next head / zero fill) are computed but never stored
        q = QD.load([(bh * Lq + i * BLOCK_M).to(tl.int32), 0])
    else:
        q = tl.load(Q + bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + d[None, :],
                    mask=(offs_m < Lq)[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lst = IDX + row * n_kb
    c1 = tl.load(CNT + row * 4 + 0)
    c2 = tl.load(CNT + row * 4 + 1)
    c4 = tl.load(CNT + row * 4 + 2)
    c8 = tl.load(CNT + row * 4 + 3)
    m_i, l_i, acc = _fwd_any_level(q, m_i, l_i, acc, K1, V1, K1D, V1D, lst, c1, bh, Lk, qk_scale, d,
                                   1, BLOCK_N, HEAD_DIM, TILE1, STAGES, DOT_PREC, TMA1, CLEAN1, PAIR1)
    m_i, l_i, acc = _fwd_any_level(q, m_i, l_i, acc, K2, V2, K2D, V2D, lst + c1, c2, bh, Lk, qk_scale, d,
                                   2, BLOCK_N, HEAD_DIM, TILE2, STAGES, DOT_PREC, TMA2, CLEAN2, PAIR2)
    m_i, l_i, acc = _fwd_any_level(q, m_i, l_i, acc, K4, V4, K4D, V4D, lst + c1 + c2, c4, bh, Lk, qk_scale, d,
                                   4, BLOCK_N, HEAD_DIM, TILE4, STAGES, DOT_PREC, TMA4, CLEAN4, PAIR4)
    m_i, l_i, acc = _fwd_any_level(q, m_i, l_i, acc, K8, V8, K8D, V8D, lst + c1 + c2 + c4, c8, bh, Lk,
                                   qk_scale, d, 8, BLOCK_N, HEAD_DIM, TILE8, STAGES, DOT_PREC, TMA8, CLEAN8, PAIR8)
    nonempty = l_i > 0
    out = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), 0.0)
    tl.store(OUT + bh * Lq * HEAD_DIM + offs_m[:, None] * HEAD_DIM + d[None, :],
             out.to(OUT.dtype.element_ty), mask=(offs_m < Lq)[:, None])
    tl.store(LSE + bh * Lq + offs_m, lse, mask=offs_m < Lq)


def dot_precision(t: torch.Tensor) -> str:
    """fp32 inputs get exact fp32 products (tf32 would miss the fp32 error bar); halves ignore it.

    Interpreted runs (CPU tensors) multiply in fp32 after rounding the operands to the input
    dtype exactly as the GPU does: triton's interpreter gets bf16 dot products wrong (3.8).
    """
    if t.device.type == "cpu":
        return "cpu"
    return "ieee" if t.dtype == torch.float32 else "tf32"


def clean_flags(levels, sm_scale):
    """CLEAN1..CLEAN8 kernel flags: which levels' tiles of whole pooled rows (TMA or gathered,
    forward and dQ pass) take the bias-free clean step
    (`_clean_step` takes the max before scaling, so it needs sm_scale > 0)."""
    return {f"CLEAN{s}": s in levels and sm_scale > 0 for s in (1, 2, 4, 8)}


def pair_flags(levels):
    """PAIR1..PAIR8 kernel flags: which levels' clean tiles go two per softmax update."""
    return {f"PAIR{s}": s in levels for s in (1, 2, 4, 8)}


def level1_descriptors(k, v, tile, block_n, enabled):
    """TMA descriptors of K, V as [B*H*Lk, D] with (tile, D) boxes, or (None, None) when the
    config or the shapes don't allow them (fp32, a tile wider than a key block)."""
    if not enabled or k.dtype == torch.float32 or tile > block_n or block_n % tile:
        return None, None
    return descriptor(k, tile), descriptor(v, tile)


def descriptor(x: torch.Tensor, rows: int):
    """TMA descriptor of contiguous x [..., L, D] as [prod(...) * L, D] with (rows, D) boxes."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    dim = x.shape[-1]
    return TensorDescriptor.from_tensor(x.view(-1, dim), [rows, dim])


def level_tiles(dtype, block_n, tiles, level1_tma, pooled_tma):
    """Per level 1, 2, 4, 8: (load by TMA?, tile rows).

    A level-s key block is R = block_n / s contiguous rows of its level. Where R >= 16 (the
    smallest side of a tensor-core product) and the dtype is 16-bit, a tile of min(R, tile)
    rows of one entry loads by TMA; otherwise `tile` pooled rows of several entries are gathered.
    """
    out = []
    for s, tile in zip((1, 2, 4, 8), tiles):
        rows = block_n // s
        enabled = (level1_tma if s == 1 else pooled_tma) and dtype != torch.float32 and rows >= 16
        out.append((True, min(rows, tile)) if enabled else (False, tile))
    return out


def level_descriptors(k, v, pyramid, plan_tiles):
    """(K, V) descriptors per level where `level_tiles` chose TMA, else (None, None)."""
    levels = [(k, v), *pyramid]
    return [(descriptor(kk, t), descriptor(vv, t)) if use else (None, None)
            for (kk, vv), (use, t) in zip(levels, plan_tiles)]


def pyramid_forward(q, k, v, pyramid, plan, block_m, block_n, sm_scale, cfg):
    """out [B,H,Lq,D] (q's dtype) and base-2 LSE [B,H,Lq] (fp32) of contiguous q, k, v.

    With cfg.fwd_gluon on a Hopper GPU the Gluon kernel (gluon_forward) runs instead."""
    if cfg.fwd_gluon:
        from . import gluon_forward

        if gluon_forward.supported(q, block_m, block_n, sm_scale):
            return gluon_forward.launch_fwd_gluon(q, k, v, pyramid, plan, block_m, block_n, sm_scale,
                                                  cfg.fwd_gluon_tile, cfg.fwd_gluon_stages, cfg.fwd_gluon_pingpong)
    batch, heads, length_q, dim = q.shape
    length_k = k.shape[2]
    n_qb, n_kb = plan.cnt.shape[1], plan.idx.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, length_q), dtype=torch.float32, device=q.device)
    (k2, v2), (k4, v4), (k8, v8) = pyramid
    grid = (n_qb, batch * heads)
    tiles = level_tiles(q.dtype, block_n, cfg.fwd_tiles, cfg.fwd_tma, cfg.fwd_pooled_tma)
    (k1d, v1d), (k2d, v2d), (k4d, v4d), (k8d, v8d) = level_descriptors(k, v, pyramid, tiles)
    q_tma = cfg.fwd_q_tma and q.dtype != torch.float32
    _pyramid_fwd_kernel[grid](
        q, descriptor(q, block_m) if q_tma else None,
        k, v, k2, v2, k4, v4, k8, v8, k1d, v1d, k2d, v2d, k4d, v4d, k8d, v8d,
        plan.idx, plan.cnt, plan.order, out, lse,
        sm_scale * LOG2E, length_q, length_k, n_qb, n_kb,
        BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=dim,
        TILE1=tiles[0][1], TILE2=tiles[1][1], TILE4=tiles[2][1], TILE8=tiles[3][1],
        STAGES=cfg.fwd_stages, DOT_PREC=dot_precision(q), TMA1=tiles[0][0], TMA2=tiles[1][0],
        TMA4=tiles[2][0], TMA8=tiles[3][0], REORDER=plan.order is not None, Q_TMA=q_tma,
        **clean_flags(cfg.fwd_clean_levels, sm_scale), **pair_flags(cfg.fwd_pair_levels), num_warps=cfg.fwd_warps,
    )
    return out, lse
