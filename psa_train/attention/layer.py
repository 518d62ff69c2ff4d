"""`PSAAttention`: the drop-in self-attention that backbone adapters install.

It ties the pieces together: layout -> block scores -> levels -> `pyramid_attention` -> inverse
layout. Selection runs under no_grad (levels are discrete); only the attention is differentiable.
At budget 0 it is exactly dense SDPA, which is how annealed training starts.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from psa_train.kernels import pyramid_attention

from .config import PSAConfig, check_budget
from .layout import layout_permutation, permute_tokens
from .levels import (
    LEVEL_VALUES,
    assign_levels,
    density_from_counts,
    density_from_histogram,
    key_similarity,
    level_counts,
)
from .scoring import block_scores


class PSAAttention(nn.Module):
    """Pyramid Sparse Attention over q, k, v [B, H, L, D].

    Attributes:
      config: this layer's own copy of the `PSAConfig` (changing the caller's object later has
        no effect; set `layer.budget` or `layer.config.<field>` instead).
      budget: read/write shortcut to `config.budget` (validated); callbacks anneal it. The layer
        also keeps it in a device buffer, which a `torch.compile`d layer reads: a new budget
        then neither compiles again nor goes stale in a CUDA graph. A compiled layer reads no
        Python copy of it (each would be a guard, and a recompile per value under
        `dynamic=False`), so set it through `layer.budget`: a direct write to `config.budget`
        reaches the buffer only at the next eager call.
      force_level: debug/test hook. None (default) = normal selection. An int in {0,1,2,4,8}
        makes every block that level and always runs `pyramid_attention` (even at budget 0);
        `force_level=1` must reproduce dense attention.
      last_density, last_level_histogram: statistics of the last forward (None before any);
        computed lazily from a tiny on-device tensor, so logging costs one sync only when read.
      last_level_counts: that tensor (blocks at each of LEVEL_VALUES), for metrics that reduce
        across processes without a host sync per step.
      keep_levels: when True the last level map is kept in `last_levels` (for pictures).
    """

    def __init__(self, config: PSAConfig | None = None) -> None:
        super().__init__()
        self.config = dataclasses.replace(config) if config is not None else PSAConfig()
        self.force_level: int | None = None
        self.keep_levels = False
        self._stashed: tuple | None = None  # (call key, levels) of the last forward with grad
        self.last_levels: torch.Tensor | None = None
        self._last_counts: torch.Tensor | None = None
        # the budget's float64 bits (an int64 buffer, so casting the model to bf16 leaves it exact)
        self.register_buffer("_budget_bits", torch.zeros((), dtype=torch.int64), persistent=False)
        self._write_budget()  # also sets _buffered_budget and _dense_budget (budget 0: dense SDPA)

    @property
    def budget(self) -> float:
        return self.config.budget

    @budget.setter
    def budget(self, value: float) -> None:
        self.config.budget = check_budget(value)
        self._write_budget()

    def _write_budget(self) -> None:
        """Copy config.budget into the buffer (a fill on its device: no host sync)."""
        bits = int(torch.tensor(self.config.budget, dtype=torch.float64).view(torch.int64))
        self._budget_bits.fill_(bits)
        self._buffered_budget = self.config.budget
        self._dense_budget = self.config.budget == 0.0

    def _sync_budget(self, device: torch.device) -> None:
        """Eager calls: the buffer (and the dense flag) up to date with config.budget, on `device`.
        A compiled graph cannot do this (a fill there would bake the value into a CUDA graph)."""
        if self._budget_bits.device != device:
            self._budget_bits = self._budget_bits.to(device)
        if self.config.budget != self._buffered_budget:
            self._write_budget()

    @property
    def last_level_counts(self) -> torch.Tensor | None:
        return self._last_counts

    @property
    def last_level_histogram(self) -> dict[int, float] | None:
        if self._last_counts is None:
            return None
        counts = self._last_counts.tolist()
        total = max(1, sum(counts))
        return {s: c / total for s, c in zip(LEVEL_VALUES, counts)}

    @property
    def last_density(self) -> float | None:
        hist = self.last_level_histogram
        return None if hist is None else density_from_histogram(hist)

    def extra_repr(self) -> str:
        c = self.config
        return f"band_mode={c.band_mode}, budget={c.budget}, block=({c.block_m}, {c.block_n}), layout={c.layout}"

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        grid: tuple[int, int, int] | None = None,
        sm_scale: float | None = None,
    ) -> torch.Tensor:
        """Self-attention; with `grid` = (T, H, W), L must be `config.prefix_tokens + T*H*W`."""
        cfg = self.config
        force = self.force_level
        if force is not None and force not in LEVEL_VALUES:
            raise ValueError(f"force_level must be None or one of {LEVEL_VALUES}, got {force!r}")
        if not torch.compiler.is_compiling():
            self._sync_budget(q.device)
        if force is None and self._dense_budget:  # compiled: a bool guard, which changes only at budget 0
            blocks = q.shape[0] * q.shape[1] * -(-q.shape[2] // cfg.block_m) * -(-k.shape[2] // cfg.block_n)
            self._last_counts = torch.tensor([0, blocks, 0, 0, 0])  # every block dense
            self.last_levels = None
            return F.scaled_dot_product_attention(q, k, v, scale=sm_scale)

        perm = inv = None
        if grid is not None and cfg.layout != "none":
            expected = cfg.prefix_tokens + grid[0] * grid[1] * grid[2]
            if q.shape[2] != expected or k.shape[2] != expected:
                raise ValueError(
                    f"with grid={tuple(grid)} and prefix_tokens={cfg.prefix_tokens}, q and k need "
                    f"L = {expected} tokens, got {q.shape[2]} and {k.shape[2]}"
                )
            perm, inv = layout_permutation(tuple(grid), cfg.layout, cfg.tile_size, cfg.prefix_tokens, q.device)
            q, k, v = (permute_tokens(t, perm, inv) for t in (q, k, v))

        levels = self._levels_for(q, k, sm_scale)
        out = pyramid_attention(
            q, k, v, levels, block_m=cfg.block_m, block_n=cfg.block_n, sm_scale=sm_scale, backend=cfg.backend
        )
        return out if inv is None else permute_tokens(out, inv, perm)

    def _levels_for(self, q: torch.Tensor, k: torch.Tensor, sm_scale: float | None) -> torch.Tensor:
        """`select_levels`, except when activation checkpointing re-runs this forward.

        The recomputation (inside the backward pass) gets the same q and k, so it reuses the levels
        of the forward it repeats instead of scoring again: one scoring per layer and step.
        """
        if torch.compiler.is_compiling():  # the compiled graph recomputes inside itself: score afresh
            return self.select_levels(q, k, sm_scale)
        key = (tuple(q.shape), tuple(k.shape), q.device, self.config.budget, self.force_level, sm_scale)
        if _in_backward_pass():
            if self._stashed is not None and self._stashed[0] == key:
                return self._stashed[1].to(torch.int32)
            return self.select_levels(q, k, sm_scale)
        levels = self.select_levels(q, k, sm_scale)
        self._stashed = (key, levels.to(torch.int8)) if torch.is_grad_enabled() else None
        return levels

    @torch.no_grad()
    def select_levels(self, q: torch.Tensor, k: torch.Tensor, sm_scale: float | None = None) -> torch.Tensor:
        """Levels for (already laid out) q, k; records the statistics of the call."""
        cfg = self.config
        B, H, Lq, _ = q.shape
        shape = (B, H, -(-Lq // cfg.block_m), -(-k.shape[2] // cfg.block_n))
        if self.force_level is not None:
            levels = torch.full(shape, self.force_level, dtype=torch.int32, device=q.device)
        else:
            scores = block_scores(
                q, k, cfg.block_m, cfg.block_n, cfg.sample_fraction, cfg.score_reduction, sm_scale=sm_scale
            )
            sim = None
            if any(t is not None for t in cfg.similarity_thresholds.values()):
                sim = key_similarity(k, cfg.block_n)
            levels = assign_levels(scores, cfg, key_similarity=sim, budget_bits=self._budget_bits.to(q.device))
        self._last_counts = level_counts(levels)
        if self.keep_levels:
            self.last_levels = levels.detach()
        return levels


def _in_backward_pass() -> bool:
    """True while autograd runs a backward pass (where checkpointed forwards are re-run)."""
    current_task = getattr(torch._C, "_current_graph_task_id", None)
    return current_task is not None and current_task() != -1


def mean_density(layers) -> torch.Tensor | None:
    """Mean compute density of the layers' last forwards, as a 0-d tensor (None before any ran).

    Computed on the device of the layers' statistics, so logging it in a training step costs no
    host sync (reading each layer's `last_density` waits for the GPU once per layer, mid-step).
    """
    counts = [c for c in (layer.last_level_counts for layer in layers) if c is not None]
    if not counts:
        return None
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for c in counts:  # a dense call records its counts on the CPU (no copy to the GPU)
        by_device.setdefault(c.device, []).append(c)
    total = sum(density_from_counts(torch.stack(group)).sum() for group in by_device.values())
    return total / len(counts)
