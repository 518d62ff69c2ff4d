"""`model.compile`: `torch.compile` for the LightningModules' student and teacher networks.

Why the networks and not `torch.compile(lightning_module)`: each network is compiled in place
(`nn.Module.compile`), so state-dict keys, checkpoints and exports stay those of the eager model,
the loss and the logging stay eager, and callbacks can run the student eagerly (they do, under
`torch.compiler.set_stance("force_eager")`) at shapes the training graphs were not built for.

Short sequences are bound by host time; CUDA graphs ("reduce-overhead") replay a whole forward
or backward with one launch (VideoMAE-B step with PSA: BENCHMARKS.md). Graphs are built with
`dynamic=False` unless the recipe says otherwise: the PSA layer's token layout and sample tables
are constants of one length and grid, so each clip shape gets its own graph.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .errors import ConfigError

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_KEYS = ("mode", "backend", "fullgraph", "dynamic", "options")
_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_options(value: bool | str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The recipe's `model.compile` as torch.compile keyword arguments (None: do not compile).

    null/false: eager; true: the default mode; a mode name ("reduce-overhead", ...); or a dict
    of `mode`, `backend`, `fullgraph`, `dynamic`, `options`. `dynamic` defaults to False.
    """
    if value is None or value is False:
        return None
    if value is True:
        options: dict[str, Any] = {}
    elif isinstance(value, str):
        options = {"mode": value}
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - set(COMPILE_KEYS))
        if unknown:
            raise ConfigError(f"model.compile: unknown keys {unknown}; accepted: {list(COMPILE_KEYS)}")
        options = dict(value)
    else:
        raise ConfigError(f"model.compile must be null, a bool, a mode name or a dict, got {value!r}")
    mode = options.get("mode")
    if mode is not None and mode not in COMPILE_MODES:
        raise ConfigError(f"model.compile mode must be one of {COMPILE_MODES}, got {mode!r}")
    if mode is not None and options.get("options"):
        raise ConfigError("model.compile: give either a mode or options, not both (torch.compile's rule)")
    options.setdefault("dynamic", False)
    return options


def uses_cuda_graphs(options: Mapping[str, Any] | None) -> bool:
    """Whether these torch.compile arguments replay the networks from CUDA graphs."""
    if not options:
        return False
    return options.get("mode") in _GRAPH_MODES or bool((options.get("options") or {}).get("triton.cudagraphs"))


def compile_networks(options: Mapping[str, Any] | None, *networks: nn.Module | None) -> None:
    """Compile each network in place (`nn.Module.compile`); compilation itself runs at the first call."""
    if not options:
        return
    # PSA layers record their statistics (level counts, last levels) as a side effect of forward.
    # Inside activation checkpointing dynamo breaks the graph at such a side effect unless it may
    # leave it out of the recomputation in backward, which would only record the same values again.
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    for network in networks:
        if network is not None:
            network.compile(**options)


def mark_step_begin(options: Mapping[str, Any] | None) -> None:
    """Tell CUDA-graph trees that a new step starts, so the last step's graph outputs may be reused."""
    if uses_cuda_graphs(options):
        torch.compiler.cudagraph_mark_step_begin()


def check_strategy(options: Mapping[str, Any] | None, strategy: Any) -> None:
    """Refuse what the DeepSpeed strategy cannot run compiled.

    ZeRO-3 gathers each layer's parameters in forward hooks that dynamo would break the graph
    around; CUDA graphs would capture ZeRO's gradient hooks and communication buffers.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy  # importable without deepspeed

    config = getattr(strategy, "config", None)
    if not options or not isinstance(strategy, DeepSpeedStrategy) or not isinstance(config, Mapping):
        return
    stage = (config.get("zero_optimization") or {}).get("stage", 0)
    if stage == 3:
        raise ConfigError("model.compile does not run under DeepSpeed ZeRO stage 3; use stage 2 or no compile")
    if uses_cuda_graphs(options):
        raise ConfigError(
            f"model.compile mode {options.get('mode')!r} uses CUDA graphs, which DeepSpeed's gradient hooks "
            "cannot run in; use mode 'default' (or 'max-autotune-no-cudagraphs') with DeepSpeed"
        )


class CompiledNetworks:
    """LightningModule hooks for `model.compile`: the strategy check and CUDA-graph step marks.

    The module sets `self.compile_kwargs` (from `compile_options`) and calls `compile_networks`.
    """

    compile_kwargs: dict[str, Any] | None = None

    def setup(self, stage: str) -> None:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            check_strategy(self.compile_kwargs, trainer.strategy)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        mark_step_begin(self.compile_kwargs)

    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        mark_step_begin(self.compile_kwargs)

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        mark_step_begin(self.compile_kwargs)

    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        mark_step_begin(self.compile_kwargs)
