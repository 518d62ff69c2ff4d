"""`AttentionStats`: how sparse each PSA layer really is, and how far it is from dense attention."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection

from ._layers import psa_layers
from .metrics import LevelShareMetric, RelativeErrorMetric


class AttentionStats(pl.Callback):
    """Logs density and level shares per PSA layer and averaged, and a probe's error vs dense.

    Level counts of every training step are accumulated and logged (then reset) every
    `every_n_steps` steps, so the numbers cover the whole window, not one step. The probe is the
    first training batch, kept fixed: every `every_n_steps` steps it is run through the student
    (the LightningModule's `probe_student(batch)`), and each PSA layer's output is compared with
    dense attention on the very q, k, v it received.

    Args:
        every_n_steps: logging interval in optimizer steps.
        per_layer: also log each layer's numbers (`psa_stats/layer_XX/...`), not only the mean.
        probe: run the fixed probe batch and log the relative errors.
    """

    def __init__(self, every_n_steps: int = 50, per_layer: bool = True, probe: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.per_layer = per_layer
        self.probe = probe
        self._shares: list[LevelShareMetric] = []
        self._probe_batch = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        layers = psa_layers(pl_module)
        self._shares = [LevelShareMetric().to(pl_module.device) for _ in layers]
        if self.probe and not callable(getattr(pl_module, "probe_student", None)):
            rank_zero_warn(f"AttentionStats: {type(pl_module).__name__} has no probe_student(batch); probe off")
            self.probe = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        layers = psa_layers(pl_module)
        for metric, layer in zip(self._shares, layers):
            if layer.last_level_counts is not None:
                metric.update(layer.last_level_counts)
        if self.probe and self._probe_batch is None:
            self._probe_batch = apply_to_collection(batch, torch.Tensor, lambda t: t.detach().clone())
        if trainer.global_step % self.every_n_steps == 0:
            self._log_shares(pl_module)
            if self.probe:
                self._log_probe_errors(pl_module, layers)

    def _log_shares(self, pl_module: pl.LightningModule) -> None:
        results = [metric.compute() for metric in self._shares]
        for metric in self._shares:
            metric.reset()
        if not results:
            return
        logged = {}
        for name in results[0]:
            values = torch.stack([r[name] for r in results])
            logged[f"psa_stats/{name}"] = values.mean()
            if self.per_layer:
                logged.update({f"psa_stats/layer_{i:02d}/{name}": v for i, v in enumerate(values)})
        _publish(pl_module.trainer, logged)

    def _log_probe_errors(self, pl_module: pl.LightningModule, layers) -> None:
        errors = [RelativeErrorMetric().to(pl_module.device) for _ in layers]
        handles = [
            layer.register_forward_hook(functools.partial(_compare_with_dense, metric), with_kwargs=True)
            for layer, metric in zip(layers, errors)
        ]
        try:  # eager even when the student is compiled: hooks and a probe shape would mean new graphs
            with torch.no_grad(), torch.compiler.set_stance("force_eager"):
                pl_module.probe_student(self._probe_batch)
        finally:
            for handle in handles:
                handle.remove()
        values = torch.stack([metric.compute() for metric in errors])
        logged = {"psa_stats/probe_relative_error": values.mean()}
        if self.per_layer:
            logged.update({f"psa_stats/layer_{i:02d}/probe_relative_error": v for i, v in enumerate(values)})
        _publish(pl_module.trainer, logged)


def _publish(trainer: pl.Trainer, values: dict[str, torch.Tensor]) -> None:
    """Send values to the loggers at this step only; also into `trainer.callback_metrics` and
    `trainer.logged_metrics`, where Lightning's own logging puts them.

    `LightningModule.log` from a callback keeps re-sending a step value at the following logging
    steps, which draws flat stretches between the real points; these numbers exist only every
    `every_n_steps`. The step is the one Lightning gives this batch's training loss. The values
    are already reduced across processes (torchmetrics syncs in `compute`).
    """
    values = {k: v.detach().float() for k, v in values.items()}
    trainer.callback_metrics.update(values)
    trainer.logged_metrics.update(values)
    if trainer.is_global_zero and trainer.loggers:
        scalars = {k: v.item() for k, v in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=max(trainer.global_step - 1, 0))


def _compare_with_dense(metric: RelativeErrorMetric, layer, args, kwargs, output) -> None:
    """Forward hook: dense SDPA on the layer's own q, k, v against what the layer returned."""
    names = ("q", "k", "v")
    q, k, v = (args[i] if len(args) > i else kwargs[name] for i, name in enumerate(names))
    dense = F.scaled_dot_product_attention(q, k, v, scale=kwargs.get("sm_scale"))
    metric.update(output, dense)
