"""Wan2.1 (diffusers `WanTransformer3DModel`) with Pyramid Sparse Attention in its self-attention.

`enable_psa(transformer, PSAConfig(...))` swaps the processor of every self-attention (`attn1`)
for a `WanPSAProcessor`: the same projections, q/k RMS norms, rotary embedding and output
projection as diffusers' `WanAttnProcessor`, with the attention itself done by a `PSAAttention`
layer on the token grid of the current input (frames x height x width after patchify). The grid
is captured per forward by a pre-hook on the transformer. Cross-attention (`attn2`) is untouched;
`disable_psa` puts the original processors back.

The processors are `nn.Module`s (so `model.modules()` finds the PSA layers, e.g. for budget
annealing) without parameters or persistent buffers: the state dict of a patched model is the
state dict of the plain diffusers model, and weights stay loadable by diffusers alone.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .switching import processors_disabled
from ..attention import PSAAttention, PSAConfig, mean_density

HF_WAN21_1_3B = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
HF_WAN21_14B = "Wan-AI/Wan2.1-T2V-14B-Diffusers"

# A tiny Wan for tests and the demo recipe: 16 latent channels and 32-dim text embeddings (the
# demo data's shapes), patch (1, 2, 2), two heads of 64 (the Triton kernels' head dim).
TINY_WAN_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 64,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 32,
    "freq_dim": 64,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 256,
}

# The real Wan2.1-T2V architectures (diffusers' config names), for benchmarks with random weights.
WAN21_1_3B_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
WAN21_14B_CONFIG: dict[str, Any] = {
    **WAN21_1_3B_CONFIG,
    "num_attention_heads": 40,
    "ffn_dim": 13824,
    "num_layers": 40,
}
NAMED_CONFIGS = {"tiny": TINY_WAN_CONFIG, "wan21-1.3b-arch": WAN21_1_3B_CONFIG, "wan21-14b-arch": WAN21_14B_CONFIG}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _wan_class():
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"torch_dtype must be one of {sorted(_DTYPES)} or None, got {dtype!r}")
    return _DTYPES[dtype]


def load_wan_transformer(
    source: str | Mapping[str, Any],
    torch_dtype: str | torch.dtype | None = None,
    subfolder: str | None = "transformer",
    **from_pretrained_kwargs: Any,
) -> nn.Module:
    """Build or load a `WanTransformer3DModel`.

    source: a diffusers model id or local folder (loaded with `from_pretrained(source,
    subfolder=...)`; a folder that holds `config.json` itself is loaded without the subfolder),
    a config dict (random weights), or a named config: "tiny", "wan21-1.3b-arch",
    "wan21-14b-arch" (random weights, for tests and benchmarks).
    """
    cls = _wan_class()
    dtype = resolve_dtype(torch_dtype)
    if isinstance(source, str) and source in NAMED_CONFIGS:
        source = NAMED_CONFIGS[source]
    if isinstance(source, Mapping):
        config = {k: v for k, v in source.items() if not str(k).startswith("_")}
        unknown = sorted(set(config) - set(cls._get_init_keys(cls)) - {"self"})
        if unknown:
            raise ValueError(f"unknown WanTransformer3DModel config keys {unknown}")
        if isinstance(config.get("patch_size"), list):
            config["patch_size"] = tuple(config["patch_size"])
        model = cls.from_config(config)
        return cast_like_from_pretrained(model, dtype) if dtype is not None else model
    if not isinstance(source, str):
        raise ValueError(f"source must be a model id, a folder, a config dict or one of "
                         f"{sorted(NAMED_CONFIGS)}, got {type(source).__name__}")
    import os

    if os.path.isfile(os.path.join(source, "config.json")):
        subfolder = None
    return cls.from_pretrained(source, subfolder=subfolder, torch_dtype=dtype, **from_pretrained_kwargs)


def cast_like_from_pretrained(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast to `dtype` except the modules diffusers keeps in float32 (`_keep_in_fp32_modules`:
    rope, time embedder, modulation tables, norms), as `from_pretrained(torch_dtype=...)` does."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            continue  # left as built (float32; rope tables float64)
        for tensors in (module._parameters, module._buffers):
            for key, t in tensors.items():
                if t is not None and t.is_floating_point() and t.dtype != dtype:
                    if isinstance(t, nn.Parameter):
                        tensors[key] = nn.Parameter(t.detach().to(dtype), requires_grad=t.requires_grad)
                    else:
                        tensors[key] = t.to(dtype)
    return model


def is_wan_transformer(model: nn.Module) -> bool:
    try:
        return isinstance(model, _wan_class())
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return False


# --------------------------------------------------------------------------------------------
# The PSA processor
# --------------------------------------------------------------------------------------------


def _apply_rotary_emb(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding, exactly as diffusers' `WanAttnProcessor` applies it."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class WanPSAProcessor(nn.Module):
    """Self-attention processor for diffusers' `WanAttention` that attends with PSA.

    Holds the `PSAAttention` layer (`self.psa`) and the processor it replaced (`self.original`),
    which it calls when PSA is switched off (`enabled = False` or inside `psa_disabled`).
    """

    def __init__(self, config: PSAConfig, original: Any = None) -> None:
        super().__init__()
        self.psa = PSAAttention(config)
        self.enabled = True
        self.grid: tuple[int, int, int] | None = None  # set by the transformer's pre-hook
        self.original = original

    @property
    def config(self) -> PSAConfig:
        return self.psa.config

    def forward(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if not self.enabled:
            if self.original is None:
                raise RuntimeError("WanPSAProcessor was switched off but holds no original processor")
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if encoder_hidden_states is not None or getattr(attn, "add_k_proj", None) is not None:
            raise ValueError("WanPSAProcessor is for self-attention (attn1) only")
        if attention_mask is not None:
            raise ValueError("WanPSAProcessor does not take an attention_mask")
        grid = self.grid
        length = hidden_states.shape[1]
        if grid is None or grid[0] * grid[1] * grid[2] != length:
            raise RuntimeError(
                f"token grid {grid} does not match the sequence length {length}: call the transformer "
                "itself (its forward pre-hook records the grid), not its blocks on their own"
            )

        if getattr(attn, "fused_projections", False):
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        # [B, L, H, D] -> [B, H, L, D] for PSA and back.
        out = self.psa(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), grid=grid)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


# --------------------------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------------------------


def _self_attentions(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for i, block in enumerate(model.blocks):
        yield f"blocks.{i}.attn1", block.attn1


def _record_grid(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of a patched transformer: hand the current token grid to its processors."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if hidden is None or hidden.dim() != 5:
        raise ValueError("WanTransformer3DModel with PSA needs hidden_states of shape [B, C, T, H, W]")
    pt, ph, pw = module.config.patch_size
    t, h, w = hidden.shape[2:]
    grid = (t // pt, h // ph, w // pw)
    for processor in psa_processors(module):
        processor.grid = grid


def _remove_grid_hook(model: nn.Module) -> None:
    for hook_id, fn in list(model._forward_pre_hooks.items()):
        if fn is _record_grid:
            del model._forward_pre_hooks[hook_id]
            model._forward_pre_hooks_with_kwargs.pop(hook_id, None)


def psa_processors(model: nn.Module) -> list[WanPSAProcessor]:
    """The PSA processors of a patched Wan transformer (empty if PSA is not enabled)."""
    return [m for m in model.modules() if isinstance(m, WanPSAProcessor)]


def psa_layers(model: nn.Module) -> list[PSAAttention]:
    return [p.psa for p in psa_processors(model)]


def enable_psa_wan(model: nn.Module, config: PSAConfig | Mapping[str, Any]) -> list[WanPSAProcessor]:
    """Replace every `attn1` processor of a `WanTransformer3DModel` by a `WanPSAProcessor`.

    Each layer gets its own copy of `config`. Calling it on a patched model re-patches it with the
    new config (the original processors are kept). Returns the processors, in block order.
    Patching adds no parameters or persistent buffers and survives `copy.deepcopy`.
    """
    if isinstance(config, Mapping):
        config = PSAConfig.from_dict(config)
    if not isinstance(config, PSAConfig):
        raise ValueError(f"config must be a PSAConfig or a dict of its fields, got {type(config).__name__}")
    disable_psa_wan(model)
    processors = []
    for _, attn in _self_attentions(model):
        processor = WanPSAProcessor(copy.deepcopy(config), original=attn.processor)
        ref = next(iter(attn.parameters()), None)
        if ref is not None:
            processor.to(ref.device)
        attn.set_processor(processor)
        processors.append(processor)
    model.register_forward_pre_hook(_record_grid, with_kwargs=True)
    return processors


def disable_psa_wan(model: nn.Module) -> None:
    """Undo `enable_psa_wan`: the original processors come back and the grid hook is removed."""
    for _, attn in _self_attentions(model):
        processor = attn.processor
        if isinstance(processor, WanPSAProcessor):
            attn.set_processor(processor.original)
    _remove_grid_hook(model)


def psa_disabled(model: nn.Module) -> contextlib.AbstractContextManager:
    """Run a patched model densely (through its original processors) inside the block."""
    return processors_disabled(psa_processors(model))


def set_psa_budget(model: nn.Module, budget: float) -> None:
    """Set the sparsity budget of every PSA layer of the model."""
    for layer in psa_layers(model):
        set_layer_budget(layer, budget)


def set_layer_budget(layer: PSAAttention, budget: float) -> None:
    layer.budget = budget


def psa_budget(model: nn.Module) -> float | None:
    """Mean budget over the PSA layers (None when PSA is not enabled)."""
    layers = psa_layers(model)
    if not layers:
        return None
    return sum(float(layer.config.budget) for layer in layers) / len(layers)


def psa_density(model: nn.Module) -> float | None:
    """Mean `last_density` of the PSA layers after the last forward (None if none measured).
    Waits for the GPU; a training step logs `mean_density(psa_layers(model))` instead."""
    density = mean_density(psa_layers(model))
    return None if density is None else float(density)

