"""Backbone adapters that swap self-attention for PSA (Wan via diffusers, ViTs via transformers)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["enable_psa", "disable_psa"]

def _supported() -> str:
    from .vit import SUPPORTED_VIT

    return f"diffusers WanTransformer3DModel, {SUPPORTED_VIT}"


def _unsupported(model: nn.Module) -> ValueError:
    return ValueError(
        f"PSA is not supported for {type(model).__module__}.{type(model).__name__}; "
        f"supported backbones: {_supported()}"
    )


def enable_psa(model: nn.Module, config: Any) -> list[nn.Module]:
    """Swap the self-attention of a supported backbone for PSA; returns the PSA processors.

    config: a `psa_train.attention.PSAConfig` or a dict of its fields.
    """
    from .vit import enable_psa_vit, is_vision_encoder
    from .wan import enable_psa_wan, is_wan_transformer

    if is_wan_transformer(model):
        return enable_psa_wan(model, config)
    if is_vision_encoder(model):
        return enable_psa_vit(model, config)
    raise _unsupported(model)


def disable_psa(model: nn.Module) -> None:
    """Restore a model patched by `enable_psa` to its original (dense) attention."""
    from .vit import disable_psa_vit, is_vision_encoder
    from .wan import disable_psa_wan, is_wan_transformer

    if is_wan_transformer(model):
        return disable_psa_wan(model)
    if is_vision_encoder(model):
        return disable_psa_vit(model)
    raise _unsupported(model)
