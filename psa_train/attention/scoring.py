"""Block scores: a cheap estimate of how much attention each query block pays each key block.

Only a few evenly spaced tokens per block are used (a quarter by default), and query blocks are
processed in chunks, so the cost is a small fraction of the attention itself and memory stays
bounded at long sequence lengths (B=1, H=12, L=32760 peaks at a few hundred MB).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch


def sample_positions(length: int, block: int, fraction: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, evenly strided sample of each block's tokens.

    A block of n tokens (the tail block may be shorter) contributes c = max(1, round(fraction*n))
    tokens at offsets floor((i + 0.5) * n / c), i < c. Returns (token index, block index), both
    LongTensors sorted by token.
    """
    if length < 1 or block < 1:
        raise ValueError(f"length and block must be >= 1, got {length}, {block}")
    idx, blk = [], []
    n_full, tail = divmod(length, block)
    for n, count, first in ((block, n_full, 0), (tail, 1 if tail else 0, n_full)):
        if count == 0:
            continue
        c = max(1, int(fraction * n + 0.5))
        offs = ((torch.arange(c, device=device, dtype=torch.float64) + 0.5) * n / c).floor().long()
        starts = (torch.arange(count, device=device) + first) * block
        idx.append((starts[:, None] + offs[None, :]).reshape(-1))
        blk.append((torch.arange(count, device=device) + first).repeat_interleave(c))
    return torch.cat(idx), torch.cat(blk)


def padded_samples(length: int, block: int, fraction: float, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_positions` laid out as [blocks, slots] with a validity mask.

    Every block gets the same power-of-two number of slots (the most any block samples), so
    per-block reductions are reshapes; slots a block does not use are marked invalid (and point
    at token 0, a real row, so gathers through the table stay in range). Built once per
    (length, block, fraction, device) and cached, so a GPU caller never waits on a host-to-device
    copy. The tensors are shared between callers: do not modify them in place.
    """
    tables = _sample_tables(length, block, fraction, str(torch.device("cpu" if device is None else device)))
    return tables.rows, tables.valid


class _SampleTables(NamedTuple):
    rows: torch.Tensor  # [blocks, slots] int64 token of each slot (0 where unused)
    valid: torch.Tensor  # [blocks, slots] bool
    counts: torch.Tensor  # [blocks, 1] valid slots per block (float32), for the mean
    full_blocks: int  # leading blocks with every slot valid (the kernel skips their masking)
    # (first, step) when every valid slot i (row-major over [blocks, slots]) samples token
    # first + step * i: the kernels may then read the rows in place instead of gathering them
    stride: tuple[int, int] | None = None


@functools.lru_cache(maxsize=64)
def _sample_tables(length: int, block: int, fraction: float, device: str) -> _SampleTables:
    rows, valid = _padded_samples_cpu(length, block, fraction)
    full_blocks = int(valid.all(-1).int().cumprod(0).sum())
    stride = _even_stride(rows, valid)
    rows, valid = rows.to(device), valid.to(device)
    return _SampleTables(rows, valid, valid.sum(-1, keepdim=True).float(), full_blocks, stride)


@torch.compiler.assume_constant_result
def _constant_tables(length: int, block: int, fraction: float, device: str) -> _SampleTables:
    """`_sample_tables`, which torch.compile runs at trace time and keeps as constants of the graph
    (traced, they would be rebuilt on every call; first made inside a CUDA-graph capture, they would
    live in the graph's private memory)."""
    return _sample_tables(length, block, fraction, device)


def _even_stride(rows: torch.Tensor, valid: torch.Tensor) -> tuple[int, int] | None:
    """(first, step) if valid slot i of the flattened table samples token first + step * i."""
    flat = rows.reshape(-1)
    if flat.numel() < 2:
        return None
    first, step = int(flat[0]), int(flat[1] - flat[0])
    slot = torch.arange(flat.numel())
    ok = step > 0 and bool((flat == first + step * slot)[valid.reshape(-1)].all())
    return (first, step) if ok else None


@functools.lru_cache(maxsize=64)
def _padded_samples_cpu(length: int, block: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    idx, blk = sample_positions(length, block, fraction)
    blocks = -(-length // block)
    counts = torch.bincount(blk, minlength=blocks)
    slots = 1 << (int(counts.max()) - 1).bit_length()
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(idx.numel()) - first[blk]
    rows = torch.zeros(blocks, slots, dtype=torch.long)
    valid = torch.zeros(blocks, slots, dtype=torch.bool)
    rows[blk, slot] = idx
    valid[blk, slot] = True
    return rows, valid


def _block_lse_torch(q, k, q_rows, k_rows, k_valid, slots, scale, chunk_elements):
    """Natural-log log-sum-exp of each sampled query's logits within each key block (PyTorch)."""
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, H = q.shape[:2]
    ks = k[:, :, k_rows].to(dtype)  # [B, H, nK * slots, D]
    invalid = ~k_valid.view(-1, slots)
    step = max(1, chunk_elements // max(1, B * H * k_rows.numel()))
    parts = []
    for lo in range(0, q_rows.numel(), step):
        qs = q[:, :, q_rows[lo : lo + step]].to(dtype)
        logits = torch.matmul(qs, ks.transpose(-1, -2)) * scale
        logits = logits.unflatten(-1, invalid.shape).masked_fill(invalid, float("-inf"))
        parts.append(torch.logsumexp(logits, dim=-1))
    return torch.cat(parts, dim=2)


@torch.no_grad()
def block_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    block_m: int = 128,
    block_n: int = 64,
    sample_fraction: float = 0.25,
    reduction: str = "max",
    *,
    sm_scale: float | None = None,
    normalize: bool = True,
    chunk_elements: int = 1 << 25,
    backend: str = "auto",
) -> torch.Tensor:
    """Pooled attention of sampled queries on sampled keys, per (query block, key block).

    q [B, H, Lq, D], k [B, H, Lk, D] -> S [B, H, ceil(Lq/block_m), ceil(Lk/block_n)].
    Every sampled query takes a softmax (scale `sm_scale`, default 1/sqrt(D)) over all sampled
    keys; its probabilities are summed per key block; the sampled queries of a query block are
    reduced by "max" (the paper's choice: a block matters if it matters to any query) or "mean".
    With `normalize` every row is scaled to sum to 1, the mass used by threshold bands.

    A block's summed probability is softmax over blocks of the per-block log-sum-exp, so only
    [sampled queries, key blocks] numbers are ever stored. backend "auto" runs one Triton kernel
    on CUDA (fp16/bf16, D 64 or 128: logits, per-block sums, softmax over blocks, pooling and
    normalisation fused, float32 result; kernels/triton_block_scores.py) and PyTorch
    otherwise (float32, float64 for float64 inputs, `chunk_elements` logits at a time);
    "triton" / "torch" force one.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must be [B, H, L, D] with equal B, H, D, got {tuple(q.shape)}, {tuple(k.shape)}")
    if reduction not in ("max", "mean"):
        raise ValueError(f"reduction must be one of ('max', 'mean'), got {reduction!r}")
    if not 0.0 < sample_fraction <= 1.0:
        raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be one of ('auto', 'triton', 'torch'), got {backend!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    if backend == "auto":
        compiled = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in (64, 128)
        backend = "triton" if compiled else "torch"
    q_tab = _constant_tables(q.shape[2], block_m, sample_fraction, str(q.device))
    k_tab = _constant_tables(k.shape[2], block_n, sample_fraction, str(k.device))
    if backend == "triton" and torch.compiler.is_compiling():  # one opaque operator (kernels/compiled_ops.py)
        from psa_train.kernels.compiled_ops import block_scores_op

        return block_scores_op(q, k, q_tab.rows, q_tab.valid, k_tab.rows, k_tab.valid, k_tab.full_blocks,
                               list(q_tab.stride or ()), list(k_tab.stride or ()), scale, reduction, normalize)
    if backend == "triton":
        # triton is imported only where used
        from psa_train.kernels.triton_block_scores import block_scores_triton

        return block_scores_triton(q, k, q_tab.rows, q_tab.valid, k_tab.rows, k_tab.valid, scale,
                                   reduction, normalize, k_tab.full_blocks, row_strides=(q_tab.stride, k_tab.stride))
    slots = k_tab.rows.shape[1]
    lse = _block_lse_torch(q, k, q_tab.rows.flatten(), k_tab.rows.flatten(), k_tab.valid.flatten(), slots, scale,
                           chunk_elements)
    mass = torch.softmax(lse, dim=-1)  # [B, H, nQ * q_slots, nK]: each sampled query's block masses
    mass = mass.unflatten(2, q_tab.rows.shape)  # [B, H, nQ, q_slots, nK]
    sampled = q_tab.valid[:, :, None]
    if reduction == "max":
        out = mass.masked_fill(~sampled, float("-inf")).amax(dim=3)
    else:
        out = mass.masked_fill(~sampled, 0.0).sum(dim=3) / q_tab.counts
    if normalize:
        out = out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
    return out
