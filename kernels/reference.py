"""Pure-PyTorch pyramid attention: the semantics of DESIGN.md §1, for CPU tensors and as the
ground truth the Triton kernels are tested against.

Because every key block size is a multiple of 8, the level-s pooled keys of block j are
exactly rows [j*bn/s, (j+1)*bn/s) of the whole key sequence mean-pooled with stride s (the
last group may hold fewer than s tokens). So the reference builds one key/value "pyramid"
(levels 1, 2, 4, 8 concatenated), masks every (query, pooled key) pair whose block does not
sit at that level, and runs a masked softmax over it, a chunk of query blocks at a time.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

PYRAMID_LEVELS = (1, 2, 4, 8)

# Logit entries per query block chunk: bounds the memory of one chunk's score matrix.
_CHUNK_ELEMENTS = 1 << 26


def mean_pool(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each group of `stride` consecutive tokens along dim -2; also the group sizes.

    The last group holds the remaining tokens when the length is not a multiple of the stride.
    """
    length = x.shape[-2]
    if stride == 1:
        return x, torch.ones(length, dtype=x.dtype, device=x.device)
    groups = -(-length // stride)
    pad = groups * stride - length
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad))
    sums = padded.unflatten(-2, (groups, stride)).sum(dim=-2)
    counts = torch.full((groups,), float(stride), dtype=x.dtype, device=x.device)
    counts[-1] = stride - pad
    return sums / counts[:, None], counts


def _pyramid(k: torch.Tensor, v: torch.Tensor, block_n: int):
    """Concatenated pooled keys/values of every level, their ln(n) bias, level and key block."""
    keys, values, bias, level_of, block_of = [], [], [], [], []
    for stride in PYRAMID_LEVELS:
        pooled_k, counts = mean_pool(k, stride)
        pooled_v, _ = mean_pool(v, stride)
        rows = torch.arange(pooled_k.shape[-2], device=k.device)
        keys.append(pooled_k)
        values.append(pooled_v)
        bias.append(torch.log(counts))
        level_of.append(torch.full_like(rows, stride))
        block_of.append(rows * stride // block_n)
    return (
        torch.cat(keys, dim=-2),
        torch.cat(values, dim=-2),
        torch.cat(bias),
        torch.cat(level_of),
        torch.cat(block_of),
    )


def _attend_chunk(q, keys, values, bias, allowed, sm_scale):
    """Masked softmax attention of one chunk of query rows; rows with no allowed key give 0."""
    logits = torch.matmul(q, keys.transpose(-1, -2)) * sm_scale + bias
    logits = logits.masked_fill(~allowed, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(logits - row_max)
    norm = weights.sum(dim=-1, keepdim=True)
    out = torch.matmul(weights, values)
    return out / torch.where(norm > 0, norm, torch.ones_like(norm))


def reference_pyramid_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    levels: torch.Tensor,
    block_m: int,
    block_n: int,
    sm_scale: float,
) -> torch.Tensor:
    """Pyramid attention of DESIGN.md §1 in PyTorch; arguments are assumed validated.

    Half-precision inputs are computed in float32 and the output cast back. Query blocks are
    processed in chunks; when gradients are needed each chunk is checkpointed, so the
    backward pass never holds more than one chunk's score matrix either.
    """
    out_dtype = q.dtype
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = (t.to(compute_dtype) for t in (q, k, v))
    keys, values, bias, level_of, block_of = _pyramid(k, v, block_n)

    length_q = q.shape[-2]
    batch, heads = q.shape[:2]
    rows_per_chunk = max(block_m, _CHUNK_ELEMENTS // max(1, batch * heads * keys.shape[-2]))
    blocks_per_chunk = max(1, rows_per_chunk // block_m)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))

    outputs = []
    for first_block in range(0, levels.shape[2], blocks_per_chunk):
        last_block = min(levels.shape[2], first_block + blocks_per_chunk)
        row_start, row_end = first_block * block_m, min(length_q, last_block * block_m)
        with torch.no_grad():
            block_levels = levels[:, :, first_block:last_block, :].long()
            seen_at = block_levels[..., block_of]  # [B, H, blocks, pyramid rows]
            allowed = (seen_at == level_of).repeat_interleave(block_m, dim=2)
            allowed = allowed[:, :, : row_end - row_start]
        q_rows = q[:, :, row_start:row_end]
        args = (q_rows, keys, values, bias, allowed, sm_scale)
        if needs_grad:
            outputs.append(checkpoint(_attend_chunk, *args, use_reentrant=False))
        else:
            outputs.append(_attend_chunk(*args))
    return torch.cat(outputs, dim=-2).to(out_dtype)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
