"""Level assignment: turn block scores into a pyramid level per (query block, key block).

Per query block the key blocks are sorted by score and cut into bands (quota or threshold, moved
by the sparsity budget); an optional similarity cap refuses to pool blocks whose keys are not
alike; prefix blocks are forced dense. Also the statistics every log reports (density, histogram).
"""

from __future__ import annotations

import functools

import torch

from .config import BOUNDARY_ONE, LEVELS, POOLED_LEVELS, PSAConfig, check_budget

LEVEL_VALUES = (0, 1, 2, 4, 8)


@torch.no_grad()
def key_similarity(k: torch.Tensor, block_n: int, levels: tuple[int, ...] = POOLED_LEVELS) -> torch.Tensor:
    """How well s-fold mean pooling represents each key block, for each stride s in `levels`.

    k [B, H, Lk, D] -> [B, H, ceil(Lk/block_n), len(levels)]. For stride s the block's keys are
    split into groups of s consecutive tokens (from the block start, never crossing it; the last
    group of a tail block may be smaller, exactly as the kernel pools them); the value is the
    mean over the block's tokens of cos(k_t, mean of t's group). 1.0 means pooling loses nothing
    in direction; a group of one token has similarity 1; a zero key counts as 0.
    """
    B, H, L, D = k.shape
    if any(s < 1 or block_n % s for s in levels):
        raise ValueError(f"levels must divide block_n={block_n}, got {levels}")
    nk = -(-L // block_n)
    pad = nk * block_n - L
    dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    x = torch.nn.functional.pad(k.to(dtype), (0, 0, 0, pad)).view(B, H, nk, block_n, D)
    valid = (torch.arange(nk * block_n, device=k.device) < L).to(dtype).view(nk, block_n)
    count = valid.sum(-1)  # valid tokens per block
    eps = torch.finfo(dtype).eps
    out = []
    for s in levels:
        g = x.view(B, H, nk, block_n // s, s, D)
        vg = valid.view(nk, block_n // s, s, 1)
        mean = (g * vg).sum(-2, keepdim=True) / vg.sum(-2, keepdim=True).clamp_min(1)
        cos = torch.nn.functional.cosine_similarity(g, mean.expand_as(g), dim=-1, eps=eps)
        cos = (cos * vg.squeeze(-1)).sum((-1, -2)) / count
        out.append(cos)
    return torch.stack(out, dim=-1)


def _first_band(before: torch.Tensor, bounds: list[float] | torch.Tensor) -> torch.Tensor:
    """Level of the first band whose boundary is above `before` (0 if none)."""
    level = torch.zeros(before.shape, dtype=torch.int32, device=before.device)
    for s, b in reversed(list(zip(LEVELS, bounds))):  # finest band last so it wins
        hit = (before < b) | (b >= BOUNDARY_ONE)  # b: a float, or a 0-d tensor under the compiler
        level = torch.where(hit, torch.full_like(level, s), level)
    return level


def _quota_levels_by_rank(num_blocks: int, counts: list[int], device) -> torch.Tensor:
    """Level of the block at each rank, built on `device` (a table copied from the host would
    stall it on every call)."""
    rank = torch.arange(num_blocks, device=device)
    level = torch.zeros(num_blocks, dtype=torch.int32, device=device)
    for s, n in reversed(list(zip(LEVELS, counts))):  # finest band last so it wins
        level = torch.where(rank < n, s, level)
    return level


def quota_counts(num_blocks: int, config: PSAConfig, budget: float | None = None) -> list[int]:
    """Cumulative number of blocks through each level (1, 2, 4, 8) for a row of `num_blocks`.

    round-half-up of boundary * num_blocks, so counts are monotone in the budget; a boundary
    >= 1 means all blocks; at least one block is level 1.
    """
    counts, prev = [], 1
    for b in config.boundaries(budget).values():
        n = num_blocks if b >= BOUNDARY_ONE else min(num_blocks, int(b * num_blocks + 0.5))
        prev = max(prev, n)
        counts.append(min(prev, num_blocks))
    return counts


def _boundaries_from_bits(config: PSAConfig, budget_bits: torch.Tensor) -> torch.Tensor:
    """`config.boundaries(budget)` as a float64 tensor, the budget read from its bits: under the
    compiler a Python float would be a constant of the graph (a new graph per annealed budget)."""
    budget = budget_bits.view(torch.float64)
    targets = torch.tensor(list(config.target_boundaries().values()), dtype=torch.float64, device=budget.device)
    return 1.0 - budget * (1.0 - targets)  # the same two roundings as the Python expression


def _quota_counts_tensor(num_blocks: int, bounds: torch.Tensor) -> torch.Tensor:
    """`quota_counts` from tensor boundaries: round half up, monotone, at least one level-1 block."""
    counts = torch.where(bounds >= BOUNDARY_ONE, num_blocks, (bounds * num_blocks + 0.5).floor().clamp(max=num_blocks))
    return torch.cummax(counts.clamp(min=1), dim=0).values.long()


_ASSIGN_BACKENDS = ("auto", "triton", "torch")


def _ranked_levels_torch(scores: torch.Tensor, config: PSAConfig, budget: float | None,
                         budget_bits: torch.Tensor | None = None) -> torch.Tensor:
    """The reference path (any device and dtype): sort, band lookup by rank, scatter back.
    Compiled with budget_bits, the band edges are tensors computed from them (no recompile per budget)."""
    nk = scores.shape[-1]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    bounds_tensor = None
    if budget is None and budget_bits is not None and torch.compiler.is_compiling():
        bounds_tensor = _boundaries_from_bits(config, budget_bits.to(scores.device))
    if config.band_mode == "quota":
        counts = quota_counts(nk, config, budget) if bounds_tensor is None else _quota_counts_tensor(nk, bounds_tensor)
        ranked = _quota_levels_by_rank(nk, counts, scores.device).expand(scores.shape)
    else:
        # Mass before a block = (raw scores ranked before it) / row sum: the cumulative sum runs
        # on the raw scores, so it is exact (order-free) for ties and like-sized float32 scores,
        # and the Triton kernel, which sums in another order, gets the same bits.
        s = scores.to(torch.float64)
        total = s.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        sorted_scores = torch.gather(s, -1, order)
        before = (torch.cumsum(sorted_scores, -1) - sorted_scores) / total
        ranked = _first_band(before, list(config.boundaries(budget).values()) if bounds_tensor is None
                             else bounds_tensor)
    ranked = ranked.clone()
    ranked[..., 0] = 1  # top block: never an empty row
    levels = torch.empty(scores.shape, dtype=torch.int32, device=scores.device)
    levels.scatter_(-1, order, ranked)
    return levels


def _ranked_levels_triton(scores: torch.Tensor, config: PSAConfig, budget: float | None,
                          budget_bits: torch.Tensor | None = None) -> torch.Tensor:
    """The same levels from one kernel (kernels/triton_assign.py), its band edges as scalars. Under
    the compiler one opaque operator whose kernel derives the edges from the budget in memory:
    budget_bits, else the given budget as a constant of the graph."""
    if torch.compiler.is_compiling():
        from psa_train.kernels.compiled_ops import assign_levels_from_budget_op

        if budget_bits is None:
            value = config.budget if budget is None else check_budget(budget)
            budget_bits = torch.full((), value, dtype=torch.float64, device=scores.device).view(torch.int64)
        targets = list(config.target_boundaries().values())
        return assign_levels_from_budget_op(scores, budget_bits, targets, config.band_mode == "threshold",
                                            BOUNDARY_ONE)
    from psa_train.kernels.triton_assign import assign_levels_triton

    if config.band_mode == "quota":
        return assign_levels_triton(scores, counts=quota_counts(scores.shape[-1], config, budget))
    bounds = [float("inf") if b >= BOUNDARY_ONE else b for b in config.boundaries(budget).values()]
    return assign_levels_triton(scores, bounds=bounds)


def _pick_backend(scores: torch.Tensor, backend: str) -> str:
    """Resolve "auto": the kernel for CUDA scores it supports (float16/bfloat16/float32,
    nK <= 8192), else torch (CPU tensors: the interpreter would be far slower than torch)."""
    if backend not in _ASSIGN_BACKENDS:
        raise ValueError(f"backend must be one of {_ASSIGN_BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not scores.is_cuda:
        return "torch"
    from psa_train.kernels.triton_assign import supports

    return "triton" if supports(scores) else "torch"


@torch.no_grad()
def assign_levels(
    scores: torch.Tensor,
    config: PSAConfig,
    *,
    budget: float | None = None,
    key_similarity: torch.Tensor | None = None,
    prefix_tokens: int | None = None,
    backend: str = "auto",
    budget_bits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Levels [B, H, nQ, nK] (int32, values in {0, 1, 2, 4, 8}) from block scores [B, H, nQ, nK].

    Per row the key blocks are ranked by score (descending, ties by index). quota: the first
    n_1 ranks are level 1, the next up to n_2 level 2, ... (`quota_counts`), the rest skipped.
    threshold: a block gets the first level whose boundary is above the normalised score mass of
    the blocks ranked before it, else it is skipped. Boundaries are moved by `budget` (default
    `config.budget`). The top block of each row is always level 1. With `key_similarity`
    ([B, H, nK, 3] for strides 2, 4, 8, see `key_similarity`) a block is pooled s-fold only if
    its similarity at s reaches `config.similarity_thresholds[s]`, else it drops to the next
    finer level. Query and key blocks holding any of the `prefix_tokens` (default
    `config.prefix_tokens`) are level 1 to and from everything.

    backend: "triton" ranks and bands in one kernel (kernels/triton_assign.py; CPU tensors run
    it in the Triton interpreter; float16/bfloat16/float32 scores, nK <= 8192), "torch" with
    sort / cumsum / scatter (any dtype, float64 mass), "auto" the kernel on supported CUDA
    scores, else torch. Both give the same levels (NaN scores rank first, as in torch.sort).

    budget_bits: the same budget as a 0-d int64 tensor of its float64 bits on the scores' device
    (`PSAAttention` keeps one). Under `torch.compile` both paths read the budget from it, so an
    annealed budget neither compiles again nor goes stale in a CUDA graph; eager calls use
    `budget` / `config.budget` (compiled without bits, the budget is a constant of the graph).
    """
    if scores.dim() != 4:
        raise ValueError(f"scores must be [B, H, nQ, nK], got {tuple(scores.shape)}")
    if _pick_backend(scores, backend) == "triton":
        levels = _ranked_levels_triton(scores, config, budget, budget_bits)
    else:
        levels = _ranked_levels_torch(scores, config, budget, budget_bits)

    if key_similarity is not None:
        levels = apply_similarity_cap(levels, key_similarity, config)

    prefix = config.prefix_tokens if prefix_tokens is None else prefix_tokens
    if prefix > 0:
        levels[..., : -(-prefix // config.block_m), :] = 1
        levels[..., : -(-prefix // config.block_n)] = 1
    return levels


def apply_similarity_cap(levels: torch.Tensor, similarity: torch.Tensor, config: PSAConfig) -> torch.Tensor:
    """Demote s-fold pooled blocks whose key similarity at s is below the threshold (8->4->2->1)."""
    if similarity.shape[-1] != len(POOLED_LEVELS) or similarity.shape[:-1] != (*levels.shape[:2], levels.shape[-1]):
        raise ValueError(
            f"key_similarity must be [B, H, nK, {len(POOLED_LEVELS)}] matching levels {tuple(levels.shape)}, "
            f"got {tuple(similarity.shape)}"
        )
    levels = levels.clone()
    for i, s in reversed(list(enumerate(POOLED_LEVELS))):  # 8 first, so demotions cascade
        thr = config.similarity_thresholds.get(s)
        if thr is None:
            continue
        refused = (similarity[..., i] < thr).unsqueeze(2)  # [B, H, 1, nK]
        levels = torch.where((levels == s) & refused, torch.full_like(levels, s // 2), levels)
    return levels


def compute_density(levels: torch.Tensor, per_head: bool = False) -> float | torch.Tensor:
    """Compute density: mean over blocks of 1/level (skipped = 0). 1.0 is dense.

    With `per_head` a float64 tensor [H] (mean over batch and blocks) instead of a float.
    """
    inv = torch.where(levels > 0, 1.0 / levels.to(torch.float64).clamp_min(1), torch.zeros((), dtype=torch.float64))
    if per_head:
        return inv.transpose(0, 1).reshape(levels.shape[1], -1).mean(-1)
    return float(inv.mean())


def level_counts(levels: torch.Tensor) -> torch.Tensor:
    """Number of blocks at each level of LEVEL_VALUES, as an int64 tensor on levels' device (no
    sync). Two launches (one per level and a stack took eleven: host time at short sequences)."""
    return (levels.reshape(-1, 1) == _level_values(levels.device)).sum(0)


def _make_level_values(device: torch.device) -> torch.Tensor:
    return (1 << torch.arange(len(LEVEL_VALUES), dtype=torch.int32, device=device)) >> 1


_cached_level_values = functools.lru_cache(maxsize=8)(_make_level_values)


def _level_values(device: torch.device) -> torch.Tensor:
    """LEVEL_VALUES on `device`, made there (no host copy, which would also keep a compiled graph
    out of CUDA graphs); compiled, the graph makes them itself (dynamo would trace through a cache)."""
    return _make_level_values(device) if torch.compiler.is_compiling() else _cached_level_values(device)


def level_histogram(levels: torch.Tensor) -> dict[int, float]:
    """Share of blocks at each level {0, 1, 2, 4, 8} (sums to 1)."""
    counts = level_counts(levels).tolist()
    total = max(1, sum(counts))
    return {s: c / total for s, c in zip(LEVEL_VALUES, counts)}


def density_from_histogram(hist: dict[int, float]) -> float:
    return sum(share / s for s, share in hist.items() if s > 0)


def density_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Compute density of `level_counts` results [..., len(LEVEL_VALUES)], as a float32 tensor on
    their device: a training step can log it without waiting for the GPU (`.tolist()` would)."""
    pooling = _level_values(counts.device)[1:].to(torch.float32)  # 1, 2, 4, 8 (skipped blocks cost 0)
    counts = counts.to(torch.float32)
    return (counts[..., 1:] / pooling).sum(-1) / counts.sum(-1).clamp_min(1.0)
