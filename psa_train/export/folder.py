"""Rebuild the trained student and write it as a library-native folder.

A full export is what `WanTransformer3DModel.save_pretrained` writes (config.json and
safetensors weights, sharded above `max_shard_size`), with LoRA adapters merged into the base
weights first. An adapter export (`lora_only`) is diffusers' LoRA format for Wan:
`pytorch_lora_weights.safetensors` with `transformer.`-prefixed peft keys and the LoraConfig in
the safetensors metadata, loadable by `WanPipeline.load_lora_weights(folder)` or
`transformer.load_lora_adapter(folder)`.

Next to the weights: `psa_config.json` (the `PSAConfig` of the PSA layers, with `budget` set to
the budget the run reached; `PSAConfig.from_dict(json.load(f))` reads it) and `psa_train.json`
(what was exported from where: base model, weights kind, step, density, LoRA settings).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .. import __version__
from ..attention import PSAConfig

PSA_CONFIG_NAME = "psa_config.json"
EXPORT_INFO_NAME = "psa_train.json"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_PREFIX = "transformer"
FORMAT_VERSION = 1


class ExportError(ValueError):
    """The checkpoint and the recipe do not describe a model that can be exported."""


def build_student(args: Mapping[str, Any], student_state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The student of a `DistillationModule` with the given init args, weights from `student_state`.

    The backbone is built from `args["model"]` as the training run built it (so base weights a
    checkpoint left out, e.g. frozen LoRA bases saved with `exclude_frozen_parameters`, come from
    the same source); LoRA adapters are added as the module adds them. PSA is not enabled: it
    adds no parameters, and the export writes the plain diffusers model.
    """
    from ..models.wan import load_wan_transformer
    from ..modules.distill import DEFAULT_LORA_TARGETS

    if not student_state:
        raise ExportError("the checkpoint holds no student weights (no 'student.' entries in its state dict)")
    model = load_wan_transformer(args["model"], torch_dtype=args.get("torch_dtype"), subfolder=args.get("subfolder"))
    lora = args.get("trainable") == "lora"
    if lora:
        from peft import LoraConfig

        model.requires_grad_(False)
        model.add_adapter(
            LoraConfig(
                r=args["lora_rank"],
                lora_alpha=args["lora_alpha"],
                lora_dropout=args["lora_dropout"],
                target_modules=list(args.get("lora_target_modules") or DEFAULT_LORA_TARGETS),
                init_lora_weights=True,
            )
        )
    missing, unexpected = model.load_state_dict(dict(student_state), strict=False)
    if unexpected:
        raise ExportError(
            f"the checkpoint's student has {len(unexpected)} weights the model built from the recipe lacks "
            f"(e.g. {unexpected[:3]}); do the recipe's model/trainable/lora settings match the run?"
        )
    if missing:
        adapters_missing = [k for k in missing if "lora_" in k]
        random_base = isinstance(args["model"], (dict, Mapping)) or _is_named_config(args["model"])
        if adapters_missing or not lora or random_base:
            raise ExportError(
                f"the checkpoint lacks {len(missing)} of the student's weights (e.g. {missing[:3]}); "
                "it cannot be exported from this checkpoint"
            )
        # LoRA run whose frozen base weights were not saved: they came from args["model"].
    return model


def _is_named_config(source: Any) -> bool:
    from ..models.wan import NAMED_CONFIGS

    return isinstance(source, str) and source in NAMED_CONFIGS


def has_lora(model: nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA adapters into the base weights and remove the peft layers (in place)."""
    if has_lora(model):
        model.fuse_lora(adapter_names=list(model.peft_config))
        model.unload_lora()
    return model


def cast_for_export(model: nn.Module, dtype: str | torch.dtype | None) -> nn.Module:
    if dtype is None:
        return model
    from ..models.wan import cast_like_from_pretrained, resolve_dtype

    return cast_like_from_pretrained(model, resolve_dtype(dtype))


def save_full(model: nn.Module, output: Path, max_shard_size: str | int = "5GB") -> list[str]:
    """`save_pretrained` as safetensors (sharded above `max_shard_size`); returns the weight files."""
    merge_lora(model)
    model.save_pretrained(str(output), safe_serialization=True, max_shard_size=max_shard_size)
    return sorted(p.name for p in output.glob("*.safetensors"))


def save_adapter(model: nn.Module, output: Path, adapter_name: str = "default") -> list[str]:
    """The LoRA adapter alone in diffusers' Wan LoRA format; returns the weight files."""
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin
    from peft.utils import get_peft_model_state_dict

    if not has_lora(model) or adapter_name not in model.peft_config:
        raise ExportError("--lora-only needs a LoRA run (model.trainable: lora)")
    layers = get_peft_model_state_dict(model, adapter_name=adapter_name)
    metadata = model.peft_config[adapter_name].to_dict()
    WanLoraLoaderMixin.save_lora_weights(
        str(output),
        transformer_lora_layers=layers,
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
        transformer_lora_adapter_metadata=metadata,
    )
    return [LORA_WEIGHT_NAME]


def exported_psa_config(psa_config: PSAConfig | Mapping[str, Any], budget: float | None) -> PSAConfig:
    """The PSA configuration as exported: the run's config with the budget it reached."""
    config = psa_config if isinstance(psa_config, PSAConfig) else PSAConfig.from_dict(psa_config)
    if budget is not None:
        config = config.replace(budget=float(budget))
    return config


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def base_model_reference(args: Mapping[str, Any]) -> dict[str, Any]:
    """Where the base weights come from: {"id": hub id or None, "path": local folder or None,
    "named_config": "tiny"... or None, "subfolder": ...}."""
    return source_reference(args.get("model"), _is_named_config, args.get("subfolder"))


def source_reference(source: Any, is_named: Callable[[Any], bool], subfolder: str | None = None) -> dict[str, Any]:
    """{"id", "path", "named_config", "subfolder"} of a model source: a config dict, a named
    config (`is_named`), a local folder or a hub id."""
    ref: dict[str, Any] = {"id": None, "path": None, "named_config": None, "subfolder": subfolder}
    if isinstance(source, Mapping):
        ref["named_config"] = "config-dict"
    elif is_named(source):
        ref["named_config"] = source
    elif isinstance(source, str) and os.path.isdir(source):
        ref["path"] = os.path.abspath(source)
    elif isinstance(source, str):
        ref["id"] = source
    return ref


def export_info(
    *,
    weights: str,
    weight_files: list[str],
    args: Mapping[str, Any],
    psa_info: Mapping[str, Any],
    target_budget: float | None,
    global_step: int | None,
    epoch: int | None,
    checkpoint_kind: str,
    model_class: str,
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "psa_train_version": __version__,
        "library_name": "diffusers",
        "model_class": model_class,
        "backbone": "wan",
        "weights": weights,  # "full" | "lora_merged" | "lora_adapter"
        "weight_files": weight_files,
        "base_model": base_model_reference(args),
        "trainable": args.get("trainable"),
        "budget": psa_info.get("budget"),
        "target_budget": target_budget,
        "density": psa_info.get("density"),
        "global_step": global_step,
        "epoch": epoch,
        "checkpoint_kind": checkpoint_kind,
    }
    if args.get("trainable") == "lora":
        info["lora"] = {
            "rank": args.get("lora_rank"),
            "alpha": args.get("lora_alpha"),
            "target_modules": list(args.get("lora_target_modules") or []),
            "adapter_weight_name": LORA_WEIGHT_NAME if weights == "lora_adapter" else None,
            "prefix": LORA_PREFIX,
        }
    return info
