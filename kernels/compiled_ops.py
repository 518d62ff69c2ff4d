"""The Triton path as `torch.library` custom operators, for `torch.compile`.

Dynamo cannot trace the launchers (TMA descriptors, cached tables, Python-side configs), so
under `torch.compile` attention, block scoring and level assignment run as opaque operators
with shape-only fake implementations: no graph break around them, and
`mode="reduce-overhead"` captures their launches in a CUDA graph, which removes the host time
that bounds short sequences (the ViT shapes). Eager calls keep the plain Python path, since a
custom operator's dispatch adds host time of its own.

Registered once, on import, under the `psa_train` namespace.
"""

from __future__ import annotations

import torch

from .block_lists import BlockPlan
from .triton_autograd import backward_parts, forward_parts
from .triton_launch import cdiv
from .tuning import get_config

_NO_ORDER = 0  # an absent heavy-first order travels as an empty tensor (ops cannot return None)


@torch.library.custom_op("psa_train::pyramid_attention_fwd", mutates_args=())
def _pyramid_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, levels: torch.Tensor, block_m: int,
                 block_n: int, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                         torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse, k2, v2, k4, v4, k8, v8, idx, cnt, order) of `triton_autograd.forward_parts`."""
    out, lse, pyramid, plan = forward_parts(q, k, v, levels, block_m, block_n, sm_scale)
    order = plan.order if plan.order is not None else plan.idx.new_empty(_NO_ORDER)
    return (out, lse, *(t for pair in pyramid for t in pair), plan.idx, plan.cnt, order)


@_pyramid_fwd.register_fake
def _(q, k, v, levels, block_m, block_n, sm_scale):
    batch, heads, length_q, dim = q.shape
    length_k = k.shape[2]
    n_qb, n_kb = levels.shape[2], levels.shape[3]
    pooled = [x.new_empty(batch, heads, cdiv(length_k, s), dim) for s in (2, 4, 8) for x in (k, v)]
    heavy_first = get_config(dim, block_m, block_n, q.dtype).heavy_first
    idx = levels.new_empty(batch * heads, n_qb, n_kb, dtype=torch.int32)
    cnt = levels.new_empty(batch * heads, n_qb, 4, dtype=torch.int32)
    order = levels.new_empty((batch * heads, n_qb) if heavy_first else _NO_ORDER, dtype=torch.int32)
    lse = q.new_empty(batch, heads, length_q, dtype=torch.float32)
    return (torch.empty_like(q), lse, *pooled, idx, cnt, order)


@torch.library.custom_op("psa_train::pyramid_attention_bwd", mutates_args=())
def _pyramid_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, pooled: list[torch.Tensor], levels: torch.Tensor, idx: torch.Tensor,
                 cnt: torch.Tensor, order: torch.Tensor, block_m: int, block_n: int,
                 sm_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of `triton_autograd.backward_parts`."""
    k2, v2, k4, v4, k8, v8 = pooled
    plan = BlockPlan(idx, cnt, order if order.numel() else None)
    return backward_parts(do, q, k, v, out, lse, ((k2, v2), (k4, v4), (k8, v8)), levels, plan, block_m, block_n,
                          sm_scale)


@_pyramid_bwd.register_fake
def _(do, q, k, v, out, lse, pooled, levels, idx, cnt, order, block_m, block_n, sm_scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, levels, block_m, block_n, sm_scale = inputs
    out, lse, *pooled, idx, cnt, order = output
    ctx.save_for_backward(q, k, v, out, lse, levels, idx, cnt, order, *pooled)
    ctx.args = (block_m, block_n, sm_scale)
    ctx.mark_non_differentiable(lse, *pooled, idx, cnt, order)


def _backward(ctx, do, *unused):
    q, k, v, out, lse, levels, idx, cnt, order, *pooled = ctx.saved_tensors
    dq, dk, dv = _pyramid_bwd(do, q, k, v, out, lse, pooled, levels, idx, cnt, order, *ctx.args)
    return dq, dk, dv, None, None, None, None


_pyramid_fwd.register_autograd(_backward, setup_context=_setup_context)


def pyramid_attention_op(q, k, v, levels, block_m, block_n, sm_scale):
    """`triton_autograd.triton_pyramid_attention` through the custom operators."""
    return _pyramid_fwd(q, k, v, levels, block_m, block_n, sm_scale)[0]


@torch.library.custom_op("psa_train::block_scores", mutates_args=())
def block_scores_op(q: torch.Tensor, k: torch.Tensor, q_rows: torch.Tensor, q_valid: torch.Tensor,
                    k_rows: torch.Tensor, k_valid: torch.Tensor, k_full_blocks: int, q_stride: list[int],
                    k_stride: list[int], sm_scale: float, reduction: str, normalize: bool) -> torch.Tensor:
    """`triton_block_scores.block_scores_triton` on the sample tables of `scoring.block_scores`
    (graph constants: made inside a CUDA-graph capture they would live in the graph's memory);
    q_stride / k_stride: a table's (first, step), or empty where it has none."""
    from .triton_block_scores import block_scores_triton

    strides = (tuple(q_stride) or None, tuple(k_stride) or None)
    return block_scores_triton(q, k, q_rows, q_valid, k_rows, k_valid, sm_scale, reduction, normalize, k_full_blocks,
                               row_strides=strides)


@block_scores_op.register_fake
def _(q, k, q_rows, q_valid, k_rows, k_valid, k_full_blocks, q_stride, k_stride, sm_scale, reduction, normalize):
    batch, heads = q.shape[:2]
    return q.new_empty(batch, heads, q_rows.shape[0], k_rows.shape[0], dtype=torch.float32)


@torch.library.custom_op("psa_train::assign_levels_from_budget", mutates_args=())
def assign_levels_from_budget_op(scores: torch.Tensor, budget_bits: torch.Tensor, targets: list[float],
                                 threshold: bool, full_at: float) -> torch.Tensor:
    """`triton_assign.assign_levels_from_budget`: the budget is a tensor the kernel reads, so a
    compiled graph takes every annealed value without compiling again (the targets are constants)."""
    from .triton_assign import assign_levels_from_budget

    return assign_levels_from_budget(scores, budget_bits, targets, threshold, full_at)


@assign_levels_from_budget_op.register_fake
def _(scores, budget_bits, targets, threshold, full_at):
    return torch.empty_like(scores, dtype=torch.int32)
