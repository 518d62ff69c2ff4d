"""Finding the PSA layers of a LightningModule and reading or steering them."""

from __future__ import annotations

import torch

from psa_train.attention import PSAAttention


def psa_layers(module: torch.nn.Module) -> list[PSAAttention]:
    """The student's PSA layers: the module's `psa_layers()` if it has one, else every PSAAttention."""
    if callable(getattr(module, "psa_layers", None)):
        return list(module.psa_layers())
    return [m for m in module.modules() if isinstance(m, PSAAttention)]


def set_budget(layers: list[PSAAttention], budget: float) -> None:
    for layer in layers:
        layer.budget = budget
