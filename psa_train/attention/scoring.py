"""Block scores: a cheap estimate of how much attention each query block pays each key block.

Only a few evenly spaced tokens per block are used (a quarter by default), and query blocks are
processed in chunks, so the cost is a small fraction of the attention itself and memory stays
bounded at long sequence lengths (B=1, H=12, L=32760 peaks at a few hundred MB).
"""

from __future__ import annotations

import math

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
) -> torch.Tensor:
    """Pooled attention of sampled queries on sampled keys, per (query block, key block).

    q [B, H, Lq, D], k [B, H, Lk, D] -> S [B, H, ceil(Lq/block_m), ceil(Lk/block_n)].
    Every sampled query takes a softmax (scale `sm_scale`, default 1/sqrt(D)) over all sampled
    keys; its probabilities are summed per key block; the sampled queries of a query block are
    reduced by "max" (the paper's choice: a block matters if it matters to any query) or "mean".
    With `normalize` every row is scaled to sum to 1, the mass used by threshold bands.
    Computed in float32 (float64 for float64 inputs); query blocks are processed in chunks of
    about `chunk_elements` logits at a time.
    """
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must be [B, H, L, D] with equal B, H, D, got {tuple(q.shape)}, {tuple(k.shape)}")
    if reduction not in ("max", "mean"):
        raise ValueError(f"reduction must be one of ('max', 'mean'), got {reduction!r}")
    if not 0.0 < sample_fraction <= 1.0:
        raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    B, H, Lq, D = q.shape
    Lk = k.shape[2]
    nq, nk = -(-Lq // block_m), -(-Lk // block_n)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)

    q_idx, q_blk = sample_positions(Lq, block_m, sample_fraction, q.device)
    k_idx, k_blk = sample_positions(Lk, block_n, sample_fraction, k.device)
    ks = k[:, :, k_idx].to(dtype)  # [B, H, Sk, D]
    # One-hot key-block matrix: summing probabilities per key block is one matmul.
    onehot = torch.zeros(k_idx.numel(), nk, dtype=dtype, device=k.device)
    onehot[torch.arange(k_idx.numel(), device=k.device), k_blk] = 1.0

    out = torch.empty(B, H, nq, nk, dtype=dtype, device=q.device)
    per_block = max(1, int(sample_fraction * block_m + 0.5))
    step = max(1, chunk_elements // max(1, B * H * per_block * k_idx.numel()))
    bounds = torch.searchsorted(q_blk, torch.arange(0, nq + 1, device=q.device)).tolist()
    for b0 in range(0, nq, step):
        b1 = min(nq, b0 + step)
        lo, hi = bounds[b0], bounds[b1]
        qs = q[:, :, q_idx[lo:hi]].to(dtype)
        probs = torch.softmax(torch.matmul(qs, ks.transpose(-1, -2)) * scale, dim=-1)
        per_key_block = torch.matmul(probs, onehot)  # [B, H, sq, nk]
        seg = (q_blk[lo:hi] - b0).view(1, 1, -1, 1).expand_as(per_key_block)
        red = torch.zeros(B, H, b1 - b0, nk, dtype=dtype, device=q.device)
        red.scatter_reduce_(2, seg, per_key_block, reduce="amax" if reduction == "max" else "mean",
                            include_self=False)
        out[:, :, b0:b1] = red
    if normalize:
        out = out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return out
