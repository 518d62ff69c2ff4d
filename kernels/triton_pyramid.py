"""Mean-pooled key/value pyramid (levels 2, 4, 8) in one pass over K and V.

Each program covers a chunk of CHUNK tokens of K and V (the first level's reads bring it into
L1/L2, the other two levels re-read it from there) and writes the three pooled levels. Pooled row r of level s is the mean of tokens [r*s, min(r*s+s, Lk)), so a
level-s pooled key block j is the contiguous row range [j*bn/s, (j+1)*bn/s) (bn is a multiple
of 8). Each level is its own contiguous tensor [B, H, ceil(Lk/s), D] in the input dtype, which
is what the attention kernels gather tiles from.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import cdiv, kernel

POOL_LEVELS = (2, 4, 8)


@triton.jit
def _pool_level(X, XO, c, bh, Lk, d, S: tl.constexpr, CHUNK: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Level-S means of tokens [c*CHUNK, (c+1)*CHUNK): S strided row loads summed (2-D only;
    a reshape-and-sum of the loaded chunk ran ~8x slower on the H200)."""
    Ls = (Lk + S - 1) // S
    r = c * (CHUNK // S) + tl.arange(0, CHUNK // S)
    acc = tl.zeros([CHUNK // S, HEAD_DIM], tl.float32)
    for g in tl.static_range(S):
        t = r * S + g
        acc += tl.load(X + bh * Lk * HEAD_DIM + t[:, None] * HEAD_DIM + d[None, :],
                       mask=(t < Lk)[:, None], other=0.0).to(tl.float32)
    inv_n = 1.0 / tl.maximum(tl.minimum(Lk - r * S, S), 1).to(tl.float32)
    tl.store(XO + bh * Ls * HEAD_DIM + r[:, None] * HEAD_DIM + d[None, :],
             (acc * inv_n[:, None]).to(XO.dtype.element_ty), mask=(r < Ls)[:, None])


@kernel
def _pool_kernel(K, V, K2, V2, K4, V4, K8, V8, Lk, HEAD_DIM: tl.constexpr, CHUNK: tl.constexpr):
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    _pool_level(K, K2, c, bh, Lk, d, 2, CHUNK, HEAD_DIM)
    _pool_level(V, V2, c, bh, Lk, d, 2, CHUNK, HEAD_DIM)
    _pool_level(K, K4, c, bh, Lk, d, 4, CHUNK, HEAD_DIM)
    _pool_level(V, V4, c, bh, Lk, d, 4, CHUNK, HEAD_DIM)
    _pool_level(K, K8, c, bh, Lk, d, 8, CHUNK, HEAD_DIM)
    _pool_level(V, V8, c, bh, Lk, d, 8, CHUNK, HEAD_DIM)


def build_pyramid(k: torch.Tensor, v: torch.Tensor, chunk: int = 32, num_warps: int = 8):
    """Pooled (K_s, V_s) for s = 2, 4, 8 of contiguous k, v [B, H, Lk, D]; one kernel launch."""
    batch, heads, length, dim = k.shape
    outs = []
    for s in POOL_LEVELS:
        shape = (batch, heads, cdiv(length, s), dim)
        outs.append((k.new_empty(shape), v.new_empty(shape)))
    (k2, v2), (k4, v4), (k8, v8) = outs
    grid = (cdiv(length, chunk), batch * heads)
    _pool_kernel[grid](k, v, k2, v2, k4, v4, k8, v8, length, HEAD_DIM=dim, CHUNK=chunk, num_warps=num_warps)
    return outs
