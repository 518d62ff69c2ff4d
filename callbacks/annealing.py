"""`SparsityAnnealing`: move every PSA layer's budget from dense toward the target bands.

The budget is a pure function of the global step, so a resumed run lands on exactly the value
the uninterrupted run had; the callback's state in the checkpoint records it as well, so that a
resume with a changed schedule is noticed instead of silently jumping.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import lightning.pytorch as pl

from psa_train.attention import mean_density
from psa_train.step_logging import on_device

from ._layers import psa_layers, set_budget

Schedule = Literal["linear", "cosine", "step"]


def budget_at(
    step: int,
    *,
    start_budget: float,
    end_budget: float,
    start_step: int,
    end_step: int,
    schedule: Schedule,
    warmup_steps: int = 0,
    num_stages: int = 4,
) -> float:
    """Budget at a global step: dense (0) during warm-up, then start → end between the steps."""
    if step < warmup_steps:
        return 0.0
    if step <= start_step:
        return start_budget
    if step >= end_step:
        return end_budget
    progress = (step - start_step) / (end_step - start_step)
    if schedule == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    elif schedule == "step":
        progress = math.floor(progress * num_stages) / num_stages
    return start_budget + (end_budget - start_budget) * progress


class SparsityAnnealing(pl.Callback):
    """Sets the budget of every PSA layer before each training step and logs it with the density.

    Args:
        start_budget: budget at `start_step` (0 = dense SDPA).
        end_budget: budget from `end_step` on (1 = the configuration's target bands).
        start_step / end_step: global steps between which the budget moves.
        schedule: "linear", "cosine", or "step" (`num_stages` equal jumps).
        warmup_steps: steps held at budget 0 (dense SDPA, no sparse machinery) first.
        validation_budget: budget used in validation and sampling; None keeps the current one.
    """

    def __init__(
        self,
        start_budget: float = 0.0,
        end_budget: float = 1.0,
        start_step: int = 0,
        end_step: int = 1000,
        schedule: Schedule = "linear",
        warmup_steps: int = 0,
        num_stages: int = 4,
        validation_budget: float | None = None,
    ) -> None:
        for name, value in (("start_budget", start_budget), ("end_budget", end_budget)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if validation_budget is not None and not 0.0 <= validation_budget <= 1.0:
            raise ValueError(f"validation_budget must be None or in [0, 1], got {validation_budget}")
        if end_step <= start_step:
            raise ValueError(f"end_step ({end_step}) must be greater than start_step ({start_step})")
        if schedule not in ("linear", "cosine", "step"):
            raise ValueError(f"schedule must be 'linear', 'cosine' or 'step', got {schedule!r}")
        if num_stages < 1 or warmup_steps < 0 or start_step < 0:
            raise ValueError("num_stages must be >= 1, warmup_steps and start_step >= 0")
        self.start_budget = start_budget
        self.end_budget = end_budget
        self.start_step = start_step
        self.end_step = end_step
        self.schedule = schedule
        self.warmup_steps = warmup_steps
        self.num_stages = num_stages
        self.validation_budget = validation_budget
        self.current_budget: float | None = None
        self.current_step: int | None = None
        self._restored: dict | None = None
        self._training_budget: float | None = None

    def budget_at(self, step: int) -> float:
        return budget_at(
            step,
            start_budget=self.start_budget,
            end_budget=self.end_budget,
            start_step=self.start_step,
            end_step=self.end_step,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            num_stages=self.num_stages,
        )

    def _apply(self, pl_module: pl.LightningModule, budget: float) -> None:
        layers = psa_layers(pl_module)
        if not layers:
            raise RuntimeError("SparsityAnnealing found no PSA layers in the LightningModule")
        set_budget(layers, budget)
        self.current_budget = budget

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        restored = self._restored or {}
        if restored.get("budget") is not None and restored.get("step") is not None:
            expected = self.budget_at(restored["step"])
            if not math.isclose(restored["budget"], expected, abs_tol=1e-9):
                warnings.warn(
                    f"SparsityAnnealing: the checkpoint had budget {restored['budget']:.4f} at step "
                    f"{restored['step']}, the configured schedule gives {expected:.4f} there; "
                    "continuing with the configured schedule",
                    stacklevel=2,
                )
        self._apply(pl_module, self.budget_at(trainer.global_step))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(pl_module, self.budget_at(trainer.global_step))
        self.current_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("psa/budget", on_device(self.current_budget, pl_module), on_step=True, prog_bar=True)
        density = mean_density(psa_layers(pl_module))
        if density is not None:
            pl_module.log("psa/density", density, on_step=True, prog_bar=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._training_budget = self.current_budget
        if self.validation_budget is not None:
            self._apply(pl_module, self.validation_budget)
        elif self.current_budget is None:
            self._apply(pl_module, self.budget_at(trainer.global_step))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._training_budget is not None:
            self._apply(pl_module, self._training_budget)

    def state_dict(self) -> dict:
        return {"budget": self.current_budget, "step": self.current_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = dict(state_dict)
        self.current_budget = state_dict.get("budget")
