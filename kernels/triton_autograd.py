"""Autograd glue: ``triton_pyramid_attention`` runs the Triton forward and backward kernels.

Forward: lists (block_lists), pyramid (triton_pyramid), attention (triton_forward). The pooled
pyramid, the lists, the level map and the base-2 LSE are saved for the backward (the pyramid is
0.875x the size of K and V together; recomputing it would cost one more pass over K and V). The
transposed lists only the backward reads are built there, so forwards without gradients
(inference, the first pass of activation checkpointing) never pay for them.

Eager calls go through a `torch.autograd.Function`; under `torch.compile` the same two halves
run as custom operators (compiled_ops.py), which the compiler treats as opaque calls.
"""

from __future__ import annotations

import torch

from .block_lists import BlockPlan, build_plan, with_transposed
from .triton_backward import pyramid_backward
from .triton_forward import pyramid_forward
from .triton_pyramid import build_pyramid
from .tuning import get_config


def forward_parts(q, k, v, levels, block_m, block_n, sm_scale):
    """(out, lse, pyramid ((k2, v2), (k4, v4), (k8, v8)), forward plan) of one attention call."""
    cfg = get_config(q.shape[-1], block_m, block_n, q.dtype)
    plan = build_plan(levels, block_n, cfg.heavy_first, transposed=False)
    pyramid = build_pyramid(k, v)
    out, lse = pyramid_forward(q, k, v, pyramid, plan, block_m, block_n, sm_scale, cfg)
    return out, lse, pyramid, plan


def backward_parts(do, q, k, v, out, lse, pyramid, levels, plan, block_m, block_n, sm_scale):
    """(dq, dk, dv) from what `forward_parts` returned; builds the transposed lists."""
    cfg = get_config(q.shape[-1], block_m, block_n, q.dtype)
    plan = with_transposed(plan, levels, cfg.heavy_first)
    return pyramid_backward(q, k, v, out, lse, do.contiguous(), pyramid, plan, block_m, block_n, sm_scale, cfg)


class _PyramidAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, levels, block_m, block_n, sm_scale):
        out, lse, pyramid, plan = forward_parts(q, k, v, levels, block_m, block_n, sm_scale)
        flat_pyramid = [t for pair in pyramid for t in pair]
        ctx.save_for_backward(q, k, v, out, lse, *flat_pyramid, levels, plan.idx, plan.cnt, plan.order)
        ctx.args = (block_m, block_n, sm_scale)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, out, lse, k2, v2, k4, v4, k8, v8, levels, idx, cnt, order = ctx.saved_tensors  # None stays None
        dq, dk, dv = backward_parts(do, q, k, v, out, lse, ((k2, v2), (k4, v4), (k8, v8)), levels,
                                    BlockPlan(idx, cnt, order), *ctx.args)
        return dq, dk, dv, None, None, None, None


def triton_pyramid_attention(q, k, v, levels, block_m, block_n, sm_scale):
    """Pyramid attention (DESIGN.md §1) with Triton kernels; arguments already validated.

    q [B,H,Lq,D], k/v [B,H,Lk,D] contiguous, one dtype (fp16/bf16/fp32), D in {64, 128};
    levels integer [B,H,ceil(Lq/block_m),ceil(Lk/block_n)] in {0,1,2,4,8}. Returns out in q's
    dtype, differentiable in q, k, v. CUDA tensors run compiled kernels, CPU tensors the Triton
    interpreter (triton_launch.py).
    """
    args = (q, k, v, levels.contiguous(), int(block_m), int(block_n), float(sm_scale))
    if torch.compiler.is_compiling():
        from .compiled_ops import pyramid_attention_op

        return pyramid_attention_op(*args)
    return _PyramidAttention.apply(*args)
