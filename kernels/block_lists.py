"""Compact block lists built on the GPU from a level map (no dense scans inside attention).

Forward / dQ lists, per query block row (b, h, i): the selected key blocks grouped by level in
the order 1, 2, 4, 8 (ascending j inside a level), with counts per level. One program per row
does a counting sort: count each level, then scatter each level's block indices at its running
offset (a cumsum over the row, chunk by chunk, so any number of key blocks works).

Transposed lists, per key block (b, h, j): the query blocks that see j at level 1. Only level 1
is needed: the backward computes pooled-level key/value gradients in the query-stationary pass
(see triton_backward.py), so the key-stationary pass walks level-1 pairs only. Only the backward
reads them, so the autograd function builds them there (`with_transposed`).

Work orders: query blocks (and key blocks) of each head sorted by work, heaviest first, so the
long programs start early and short ones fill the tail; heads stay contiguous in the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton.language as tl

from .api import LEVEL_VALUES
from .triton_launch import kernel


@kernel
def _row_lists_kernel(LV, IDX, CNT, WORK, LEVELS_OK, n_kb, BLOCK_N: tl.constexpr, CHUNK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * n_kb
    c1 = tl.full([], 0, tl.int32)
    c2 = tl.full([], 0, tl.int32)
    c4 = tl.full([], 0, tl.int32)
    c8 = tl.full([], 0, tl.int32)
    c0 = tl.full([], 0, tl.int32)
    for start in range(0, n_kb, CHUNK):
        j = start + tl.arange(0, CHUNK)
        lv = tl.load(LV + base + j, mask=j < n_kb, other=-1)
        c0 += tl.sum((lv == 0).to(tl.int32), axis=0)
        c1 += tl.sum((lv == 1).to(tl.int32), axis=0)
        c2 += tl.sum((lv == 2).to(tl.int32), axis=0)
        c4 += tl.sum((lv == 4).to(tl.int32), axis=0)
        c8 += tl.sum((lv == 8).to(tl.int32), axis=0)
    # a value outside {0, 1, 2, 4, 8} is counted by none of them; the caller asserts LEVELS_OK
    tl.store(LEVELS_OK, 0, mask=c0 + c1 + c2 + c4 + c8 != n_kb)
    o1 = tl.full([], 0, tl.int32)
    o2 = c1
    o4 = c1 + c2
    o8 = c1 + c2 + c4
    for start in range(0, n_kb, CHUNK):
        j = start + tl.arange(0, CHUNK)
        lv = tl.load(LV + base + j, mask=j < n_kb, other=0)
        s1 = (lv == 1).to(tl.int32)
        tl.store(IDX + base + o1 + tl.cumsum(s1, axis=0) - 1, j, mask=s1 > 0)
        o1 += tl.sum(s1, axis=0)
        s2 = (lv == 2).to(tl.int32)
        tl.store(IDX + base + o2 + tl.cumsum(s2, axis=0) - 1, j, mask=s2 > 0)
        o2 += tl.sum(s2, axis=0)
        s4 = (lv == 4).to(tl.int32)
        tl.store(IDX + base + o4 + tl.cumsum(s4, axis=0) - 1, j, mask=s4 > 0)
        o4 += tl.sum(s4, axis=0)
        s8 = (lv == 8).to(tl.int32)
        tl.store(IDX + base + o8 + tl.cumsum(s8, axis=0) - 1, j, mask=s8 > 0)
        o8 += tl.sum(s8, axis=0)
    tl.store(CNT + row * 4 + 0, c1)
    tl.store(CNT + row * 4 + 1, c2)
    tl.store(CNT + row * 4 + 2, c4)
    tl.store(CNT + row * 4 + 3, c8)
    # pooled key rows this query block attends to (a proxy for its cost)
    tl.store(WORK + row, c1 * BLOCK_N + c2 * (BLOCK_N // 2) + c4 * (BLOCK_N // 4) + c8 * (BLOCK_N // 8))


@kernel
def _col_lists_kernel(LV, IDXT, CNTT, n_qb, n_kb, CHUNK: tl.constexpr):
    j = tl.program_id(0).to(tl.int64)
    bh = tl.program_id(1).to(tl.int64)
    src = bh * n_qb * n_kb + j
    dst = (bh * n_kb + j) * n_qb
    c = tl.full([], 0, tl.int32)
    for c0 in range(0, n_qb, CHUNK):
        i = c0 + tl.arange(0, CHUNK)
        lv = tl.load(LV + src + i * n_kb, mask=i < n_qb, other=0)
        s1 = (lv == 1).to(tl.int32)
        tl.store(IDXT + dst + c + tl.cumsum(s1, axis=0) - 1, i, mask=s1 > 0)
        c += tl.sum(s1, axis=0)
    tl.store(CNTT + bh * n_kb + j, c)


@kernel
def _rank_kernel(WORK, ORDER, n, BLOCK: tl.constexpr):
    """ORDER[h, rank] = i with items ranked by descending WORK[h, i], ties by index (what a
    stable descending argsort gives). One program per BLOCK items of a head: rank_i counts
    the items that come before i, chunk by chunk."""
    h = tl.program_id(0).to(tl.int64)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    w_i = tl.load(WORK + h * n + i, mask=i < n, other=0)
    rank = tl.zeros([BLOCK], tl.int32)
    for c0 in range(0, n, BLOCK):
        j = c0 + tl.arange(0, BLOCK)
        w_j = tl.load(WORK + h * n + j, mask=j < n, other=0)
        before = (w_j[None, :] > w_i[:, None]) | ((w_j[None, :] == w_i[:, None]) & (j[None, :] < i[:, None]))
        rank += tl.sum((before & (j < n)[None, :]).to(tl.int32), axis=1)
    tl.store(ORDER + h * n + rank, i, mask=i < n)


@dataclass
class BlockPlan:
    """Lists for one level map; every tensor int32 and contiguous. The transposed lists are
    only needed by the backward: `build_plan(..., transposed=False)` leaves them None."""

    idx: torch.Tensor  # [BH, nI, nJ] key blocks of each query block, grouped by level
    cnt: torch.Tensor  # [BH, nI, 4] counts of levels 1, 2, 4, 8
    order: torch.Tensor | None  # [BH, nI] query blocks of each head, heaviest first (None: 0..nI-1)
    idx_t: torch.Tensor | None = None  # [BH, nJ, nI] query blocks that see key block j at level 1
    cnt_t: torch.Tensor | None = None  # [BH, nJ]
    order_t: torch.Tensor | None = None  # [BH, nJ] key blocks of each head, most level-1 pairs first


def _chunk(n: int) -> int:
    return max(16, min(1024, 1 << (max(n, 1) - 1).bit_length()))


def _heaviest_first(work: torch.Tensor, heavy_first: bool) -> torch.Tensor | None:
    """Grid order per head, most work first, ties in block order (None: plain block order).
    One launch (a stable argsort takes a sort and a cast)."""
    if not heavy_first:
        return None
    heads, n = work.shape
    order = torch.empty_like(work)
    block = min(128, max(16, 1 << (n - 1).bit_length()))
    _rank_kernel[(heads, -(-n // block))](work, order, n, BLOCK=block, num_warps=4)
    return order


def build_plan(levels: torch.Tensor, block_n: int, heavy_first: bool = True, transposed: bool = True) -> BlockPlan:
    """Lists of a contiguous integer level map [B, H, nI, nJ]: one launch per direction, plus a
    ranking launch each for the heavy-first orders (skipped with heavy_first=False: grid order
    is then i, j). transposed=False builds only the forward's lists (`with_transposed` adds the
    rest). A value outside {0, 1, 2, 4, 8} fails a device-side assert on CUDA (the host is not
    stalled to read it back) and raises ValueError on CPU."""
    batch, heads, n_qb, n_kb = levels.shape
    bh = batch * heads
    dev = levels.device
    idx = torch.empty((bh, n_qb, n_kb), dtype=torch.int32, device=dev)
    cnt = torch.empty((bh, n_qb, 4), dtype=torch.int32, device=dev)
    work = torch.empty((bh, n_qb), dtype=torch.int32, device=dev)
    levels_ok = torch.ones((), dtype=torch.int32, device=dev)
    _row_lists_kernel[(bh * n_qb,)](levels, idx, cnt, work, levels_ok, n_kb, BLOCK_N=block_n, CHUNK=_chunk(n_kb),
                                    num_warps=4)
    if dev.type == "cuda":
        torch._assert_async(levels_ok, f"levels may only hold {LEVEL_VALUES}")
    elif dev.type == "cpu" and not levels_ok.item():  # (meta tensors: offline compilation)
        raise ValueError(f"levels may only hold {LEVEL_VALUES}")
    plan = BlockPlan(idx, cnt, _heaviest_first(work, heavy_first))
    return with_transposed(plan, levels, heavy_first) if transposed else plan


def with_transposed(plan: BlockPlan, levels: torch.Tensor, heavy_first: bool = True) -> BlockPlan:
    """`plan` plus the transposed (per key block, level 1) lists of the same level map."""
    batch, heads, n_qb, n_kb = levels.shape
    bh = batch * heads
    idx_t = torch.empty((bh, n_kb, n_qb), dtype=torch.int32, device=levels.device)
    cnt_t = torch.empty((bh, n_kb), dtype=torch.int32, device=levels.device)
    _col_lists_kernel[(n_kb, bh)](levels, idx_t, cnt_t, n_qb, n_kb, CHUNK=_chunk(n_qb), num_warps=4)
    return BlockPlan(plan.idx, plan.cnt, plan.order, idx_t, cnt_t, _heaviest_first(cnt_t, heavy_first))
