"""Vision transformers (HF transformers; timm optional) with Pyramid Sparse Attention.

`enable_psa_vit(model, PSAConfig(...))` routes the self-attention of a supported vision encoder
through PSA without forking model code: it registers an attention function named "psa" with
transformers' `AttentionInterface`, sets the encoder config's `_attn_implementation` to it, and
attaches a `VisionPSAProcessor` (which holds the `PSAAttention` layer) to every self-attention
module. The attention modules keep their own projections; only the attention product changes.

The token grid of the current input is recorded per forward by a pre-hook on the encoder's
embeddings module (so it is right whichever wrapper is called and for any input size):

| family | embeddings | grid (T, H, W) | prefix tokens |
|---|---|---|---|
| VideoMAE | `VideoMAEEmbeddings` | frames/tubelet x H/patch x W/patch | 0 (mean pooling head) |
| ViT | `ViTEmbeddings` | 1 x H/patch x W/patch | 1 (class token) |
| DINOv2 | `Dinov2Embeddings` | 1 x H/patch x W/patch | 1 (class token) |
| DINOv2 + registers | `Dinov2WithRegistersEmbeddings` | 1 x H/patch x W/patch | 1 + registers |
| SigLIP (vision) | `SiglipVisionEmbeddings` | 1 x H/patch x W/patch | 0 |
| timm `VisionTransformer` (if timm is installed) | `patch_embed` | 1 x grid | `num_prefix_tokens` |

Prefix tokens stay in front of the grid and are always attended at level 1 both ways; the
`prefix_tokens` field of the config is set per family (a conflicting non-zero value raises).
Processors hold no parameters or persistent buffers: the state dict of a patched model is the
plain model's. PSA does not apply attention-probability dropout (a warning says so when the
config asks for it). Inputs with masked-out tokens (VideoMAE's `bool_masked_pos`) have no full
grid and raise; ViT/DINOv2 mask tokens keep the grid and work.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .switching import processors_disabled
from ..attention import PSAAttention, PSAConfig, mean_density

ATTN_IMPLEMENTATION = "psa"
PROCESSOR_ATTR = "psa"  # attribute of an attention module that holds its VisionPSAProcessor
SUPPORTED_VIT = (
    "transformers VideoMAE, ViT, DINOv2 (with or without registers), SigLIP vision encoders; "
    "timm VisionTransformer when timm is installed"
)

Grid = tuple[int, int, int]


# --------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------


def _pair(x: Any) -> tuple[int, int]:
    if isinstance(x, (tuple, list)):
        return int(x[0]), int(x[1])
    return int(x), int(x)


def _image_grid(patch: tuple[int, int]) -> Callable[[torch.Tensor], Grid]:
    def grid(pixel_values: torch.Tensor) -> Grid:
        h, w = pixel_values.shape[-2:]
        return 1, h // patch[0], w // patch[1]

    return grid


@dataclass(frozen=True)
class _Family:
    name: str
    attention_classes: tuple[str, ...]
    prefix: Callable[[nn.Module], int]  # embeddings module -> prefix token count
    grid: Callable[[nn.Module], Callable[[torch.Tensor], Grid]]  # embeddings -> pixel_values -> grid
    drops_masked_tokens: bool = False


def _videomae_grid(emb: nn.Module) -> Callable[[torch.Tensor], Grid]:
    pe = emb.patch_embeddings
    tubelet, (ph, pw) = int(pe.tubelet_size), _pair(pe.patch_size)

    def grid(pixel_values: torch.Tensor) -> Grid:  # [B, T, C, H, W]
        t, _, h, w = pixel_values.shape[-4:]
        return t // tubelet, h // ph, w // pw

    return grid


_FAMILIES: dict[str, _Family] = {
    "VideoMAEEmbeddings": _Family(
        "videomae", ("VideoMAESelfAttention",), lambda e: 0, _videomae_grid, drops_masked_tokens=True
    ),
    "ViTEmbeddings": _Family(
        "vit", ("ViTAttention", "ViTSelfAttention"), lambda e: 1, lambda e: _image_grid(_pair(e.patch_size))
    ),
    "Dinov2Embeddings": _Family(
        "dinov2", ("Dinov2Attention", "Dinov2SelfAttention"), lambda e: 1,
        lambda e: _image_grid(_pair(e.patch_embeddings.patch_size)),
    ),
    "Dinov2WithRegistersEmbeddings": _Family(
        "dinov2_with_registers", ("Dinov2WithRegistersAttention", "Dinov2WithRegistersSelfAttention"),
        lambda e: 1 + int(e.register_tokens.shape[1]),
        lambda e: _image_grid(_pair(e.patch_embeddings.patch_size)),
    ),
    "SiglipVisionEmbeddings": _Family(
        "siglip", ("SiglipAttention",), lambda e: 0, lambda e: _image_grid(_pair(e.patch_size))
    ),
}


def _timm_vit_class():
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        return None
    return VisionTransformer


def _timm_attention_class():
    try:
        from timm.layers import Attention
    except ImportError:  # older timm
        try:
            from timm.models.vision_transformer import Attention
        except ImportError:
            return None
    return Attention


# --------------------------------------------------------------------------------------------
# Grid state and the processor
# --------------------------------------------------------------------------------------------


class _GridState:
    """The token grid of the current input of one encoder; shared by its processors.

    `record` is the forward pre-hook of the encoder's embeddings (a bound method, so the state
    is shared correctly by `copy.deepcopy` of the model).
    """

    def __init__(self, family: str, grid_fn: Callable[[torch.Tensor], Grid], drops_masked_tokens: bool) -> None:
        self.family = family
        self.grid_fn = grid_fn
        self.drops_masked_tokens = drops_masked_tokens
        self.grid: Grid | None = None
        self.masked = False

    def record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        pixel_values = args[0] if args else kwargs.get("pixel_values", kwargs.get("x"))
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"{self.family} embeddings with PSA need pixel_values as a tensor")
        self.grid = self.grid_fn(pixel_values)
        mask = args[1] if len(args) > 1 else kwargs.get("bool_masked_pos")
        self.masked = self.drops_masked_tokens and mask is not None


class VisionPSAProcessor(nn.Module):
    """PSA for one self-attention module of a vision encoder (attached as `module.psa`).

    Holds the `PSAAttention` layer (`self.psa`); when `enabled` is False (or inside
    `psa_disabled`) the module attends densely with the implementation it had before
    (`fallback`, e.g. "sdpa" or "eager").
    """

    def __init__(self, config: PSAConfig, grid_state: _GridState, fallback: str | None) -> None:
        super().__init__()
        self.psa = PSAAttention(config)
        self.enabled = True
        self.grid_state = grid_state
        self.fallback = fallback

    @property
    def config(self) -> PSAConfig:
        return self.psa.config

    def extra_repr(self) -> str:
        return f"family={self.grid_state.family}, fallback={self.fallback}"

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None
    ) -> torch.Tensor:
        """PSA on q, k, v [B, H, L, D] over the recorded grid; returns [B, H, L, D]."""
        state = self.grid_state
        grid, length = state.grid, query.shape[2]
        prefix = self.psa.config.prefix_tokens
        if state.masked:
            raise ValueError(
                f"PSA needs the full token grid; {state.family} inputs with bool_masked_pos drop tokens "
                "(run the encoder without a mask, or with PSA disabled)"
            )
        if grid is None or prefix + grid[0] * grid[1] * grid[2] != length or key.shape[2] != length:
            raise RuntimeError(
                f"token grid {grid} with {prefix} prefix tokens does not match the sequence length {length}: "
                "call the encoder (its embeddings' pre-hook records the grid), not its layers on their own"
            )
        return self.psa(query, key, value, grid=grid, sm_scale=scaling)


def _dense_function(module: nn.Module, name: str | None) -> Callable:
    from transformers import AttentionInterface

    if name not in (None, "eager", ATTN_IMPLEMENTATION) and name in AttentionInterface._global_mapping:
        return AttentionInterface._global_mapping[name]
    if name == "eager":
        eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
        if eager is not None:
            return eager
    return AttentionInterface._global_mapping["sdpa"]


def psa_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The "psa" entry of transformers' `AttentionInterface`.

    q, k, v [B, H, L, D] -> ([B, L, H, D], None), like `sdpa_attention_forward`. Modules without
    an enabled `VisionPSAProcessor` attend densely with their previous implementation.
    """
    processor = getattr(module, PROCESSOR_ATTR, None)
    if not isinstance(processor, VisionPSAProcessor) or not processor.enabled:
        fallback = processor.fallback if isinstance(processor, VisionPSAProcessor) else None
        return _dense_function(module, fallback)(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if attention_mask is not None:
        raise ValueError("PSA self-attention takes no attention_mask (vision encoders attend to all tokens)")
    if kwargs.get("is_causal"):
        raise ValueError("PSA self-attention is bidirectional; is_causal=True is not supported")
    if query.shape[1] != key.shape[1]:
        raise ValueError(
            f"PSA needs as many key/value heads as query heads, got {key.shape[1]} and {query.shape[1]}"
        )
    out = processor.attend(query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    try:
        from transformers import AttentionInterface
    except ImportError as err:  # pragma: no cover - transformers < 4.48
        raise ImportError(
            "PSA for transformers vision encoders needs transformers >= 4.48 (AttentionInterface)"
        ) from err
    AttentionInterface.register(ATTN_IMPLEMENTATION, psa_attention_forward)


_register()


# --------------------------------------------------------------------------------------------
# timm (optional)
# --------------------------------------------------------------------------------------------


def _timm_psa_forward(self: nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Forward of a timm `Attention` with PSA: its own qkv, q/k norms, proj; PSA in between."""
    processor = getattr(self, PROCESSOR_ATTR, None)
    attn_mask = args[0] if args else kwargs.get("attn_mask")
    if processor is None or not processor.enabled or attn_mask is not None or kwargs.get("is_causal"):
        return type(self).forward(self, x, *args, **kwargs)
    B, N, C = x.shape
    heads = self.num_heads
    head_dim = getattr(self, "head_dim", C // heads)
    q, k, v = self.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    out = processor.attend(q, k, v, float(self.scale))
    out = out.transpose(1, 2).reshape(B, N, heads * head_dim)
    out = getattr(self, "norm", nn.Identity())(out)
    return self.proj_drop(self.proj(out))


def _timm_grid(patch_embed: nn.Module) -> Callable[[torch.Tensor], Grid]:
    def grid(pixel_values: torch.Tensor) -> Grid:
        h, w = pixel_values.shape[-2:]
        if callable(getattr(patch_embed, "dynamic_feat_size", None)):
            gh, gw = patch_embed.dynamic_feat_size((h, w))
        else:
            ph, pw = _pair(patch_embed.patch_size)
            gh, gw = h // ph, w // pw
        return 1, int(gh), int(gw)

    return grid


# --------------------------------------------------------------------------------------------
# Finding encoders
# --------------------------------------------------------------------------------------------


@dataclass
class _Encoder:
    embeddings: nn.Module  # whose forward pre-hook records the grid
    attentions: list[nn.Module]
    family: str
    prefix: int
    grid_fn: Callable[[torch.Tensor], Grid]
    drops_masked_tokens: bool = False
    timm: bool = False


def _parent(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0]) if "." in name else model


def _find_encoders(model: nn.Module) -> list[_Encoder]:
    encoders = []
    for name, module in model.named_modules():
        family = _FAMILIES.get(type(module).__name__)
        if family is None:
            continue
        parent = _parent(model, name) if name else model
        attentions = [m for m in parent.modules() if type(m).__name__ in family.attention_classes]
        if attentions:
            encoders.append(
                _Encoder(module, attentions, family.name, family.prefix(module), family.grid(module),
                         family.drops_masked_tokens)
            )
    vit_cls, attn_cls = _timm_vit_class(), _timm_attention_class()
    if vit_cls is not None and attn_cls is not None:
        for module in model.modules():
            if isinstance(module, vit_cls):
                attentions = [m for m in module.modules() if type(m) is attn_cls]
                if attentions:
                    prefix = int(getattr(module, "num_prefix_tokens", 1))
                    encoders.append(
                        _Encoder(module.patch_embed, attentions, "timm_vit", prefix, _timm_grid(module.patch_embed),
                                 timm=True)
                    )
    return encoders


def is_vision_encoder(model: nn.Module) -> bool:
    """True if `enable_psa_vit` supports the model (it holds a supported vision encoder)."""
    return isinstance(model, nn.Module) and bool(_find_encoders(model))


# --------------------------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------------------------


def _attention_dropout(module: nn.Module) -> float:
    for name in ("dropout_prob", "attention_dropout", "dropout"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    drop = getattr(module, "attn_drop", None)
    return float(getattr(drop, "p", 0.0) or 0.0)


def enable_psa_vit(model: nn.Module, config: PSAConfig | Mapping[str, Any]) -> list[VisionPSAProcessor]:
    """Route the self-attention of every supported vision encoder in `model` through PSA.

    Each attention module gets its own copy of `config`, with `prefix_tokens` set for the family
    (class/register tokens). Calling it again re-patches with the new config. Returns the
    processors in module order. Adds no parameters or persistent buffers; survives deepcopy.
    """
    if isinstance(config, Mapping):
        config = PSAConfig.from_dict(config)
    if not isinstance(config, PSAConfig):
        raise ValueError(f"config must be a PSAConfig or a dict of its fields, got {type(config).__name__}")
    encoders = _find_encoders(model)
    if not encoders:
        raise ValueError(
            f"PSA is not supported for {type(model).__module__}.{type(model).__name__}; supported: {SUPPORTED_VIT}"
        )
    disable_psa_vit(model)
    processors: list[VisionPSAProcessor] = []
    for enc in encoders:
        if config.prefix_tokens not in (0, enc.prefix):
            raise ValueError(
                f"prefix_tokens={config.prefix_tokens} conflicts with the {enc.family} encoder, which has "
                f"{enc.prefix} prefix tokens (leave prefix_tokens at 0 to have it set automatically)"
            )
        layer_config = config.replace(prefix_tokens=enc.prefix)
        state = _GridState(enc.family, enc.grid_fn, enc.drops_masked_tokens)
        dropouts = set()
        for attn in enc.attentions:
            if enc.timm:
                fallback = None
            else:
                fallback = attn.config._attn_implementation
            processor = VisionPSAProcessor(copy.deepcopy(layer_config), state, fallback)
            setattr(attn, PROCESSOR_ATTR, processor)
            if enc.timm:
                attn.forward = types.MethodType(_timm_psa_forward, attn)
            dropouts.add(_attention_dropout(attn))
            processors.append(processor)
        if not enc.timm:
            for cfg in {id(a.config): a.config for a in enc.attentions}.values():
                cfg._attn_implementation = ATTN_IMPLEMENTATION
        enc.embeddings.register_forward_pre_hook(state.record, with_kwargs=True)
        if max(dropouts) > 0:
            warnings.warn(
                f"the {enc.family} encoder has attention dropout {max(dropouts)}; PSA does not apply "
                "attention-probability dropout", stacklevel=2,
            )
    return processors


def _remove_grid_hooks(module: nn.Module) -> None:
    for hook_id, fn in list(module._forward_pre_hooks.items()):
        if isinstance(getattr(fn, "__self__", None), _GridState):
            del module._forward_pre_hooks[hook_id]
            module._forward_pre_hooks_with_kwargs.pop(hook_id, None)


def disable_psa_vit(model: nn.Module) -> None:
    """Undo `enable_psa_vit`: processors and grid hooks removed, attention implementations restored."""
    for module in list(model.modules()):
        processor = module._modules.get(PROCESSOR_ATTR)
        if isinstance(processor, VisionPSAProcessor):
            del module._modules[PROCESSOR_ATTR]
            if "forward" in module.__dict__:  # timm: the patched bound forward
                del module.__dict__["forward"]
            cfg = getattr(module, "config", None)
            if cfg is not None and getattr(cfg, "_attn_implementation", None) == ATTN_IMPLEMENTATION:
                cfg._attn_implementation = processor.fallback
        _remove_grid_hooks(module)


# --------------------------------------------------------------------------------------------
# Helpers for training code
# --------------------------------------------------------------------------------------------


def psa_processors(model: nn.Module) -> list[VisionPSAProcessor]:
    """The PSA processors of a patched model (empty if PSA is not enabled)."""
    return [m for m in model.modules() if isinstance(m, VisionPSAProcessor)]


def psa_layers(model: nn.Module) -> list[PSAAttention]:
    return [p.psa for p in psa_processors(model)]


def psa_disabled(model: nn.Module) -> contextlib.AbstractContextManager:
    """Run a patched model densely (its previous attention implementation) inside the block."""
    return processors_disabled(psa_processors(model))


def set_psa_budget(model: nn.Module, budget: float) -> None:
    for layer in psa_layers(model):
        layer.budget = budget


def psa_budget(model: nn.Module) -> float | None:
    """Mean budget over the PSA layers (None when PSA is not enabled)."""
    layers = psa_layers(model)
    return sum(float(layer.budget) for layer in layers) / len(layers) if layers else None


def psa_density(model: nn.Module) -> float | None:
    """Mean `last_density` of the PSA layers after the last forward (None if none measured).
    Waits for the GPU; a training step logs `mean_density(psa_layers(model))` instead."""
    density = mean_density(psa_layers(model))
    return None if density is None else float(density)
