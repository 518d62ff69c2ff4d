"""`from_pretrained`: load an exported folder or Hub repo with PSA enabled as exported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .folder import EXPORT_INFO_NAME, LORA_PREFIX, LORA_WEIGHT_NAME, PSA_CONFIG_NAME


def _local_folder(path_or_repo_id: str | os.PathLike, revision: str | None, token: str | bool | None) -> Path:
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    if os.path.exists(path):
        raise ValueError(f"{path} is a file; from_pretrained needs an exported folder or a Hub repo id")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_repo_id), revision=revision, token=token))


def read_export(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(psa_config dict, psa_train.json info) of an exported folder."""
    folder = Path(folder)
    psa_file = folder / PSA_CONFIG_NAME
    if not psa_file.is_file():
        raise ValueError(f"{folder} has no {PSA_CONFIG_NAME}: not a psa-train export")
    psa = json.loads(psa_file.read_text())
    info_file = folder / EXPORT_INFO_NAME
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    return psa, info


def _base_source(info: dict[str, Any], base_model: str | os.PathLike | None) -> tuple[Any, str | None]:
    base = info.get("base_model") or {}
    if base_model is not None:
        return str(base_model), base.get("subfolder")
    source = base.get("id") or base.get("path")
    if source is None:
        what = base.get("named_config") or "unknown"
        raise ValueError(
            f"this is a LoRA adapter export whose base model ({what}) cannot be rebuilt; "
            "pass base_model=<diffusers id or folder with the base transformer>"
        )
    return source, base.get("subfolder")


def from_pretrained(
    path_or_repo_id: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    torch_dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    base_model: str | os.PathLike | None = None,
    base_subfolder: str | None = None,
    budget: float | None = None,
    psa: bool = True,
) -> nn.Module:
    """Load a model exported by `psa-train export` (a local folder or a Hub repo id).

    Returns the diffusers `WanTransformer3DModel` in eval mode with PSA enabled as exported
    (`psa_config.json`, at the budget the run reached); for a `VideoClassifier` export
    (`library_name: transformers` in psa_train.json), the transformers model (e.g.
    `VideoMAEForVideoClassification`, or psa-train's `FrameEncoderClassifier`) with PSA enabled
    by `enable_psa_vit`. An adapter-only export is loaded onto its
    base model (the one recorded at export, or `base_model`/`base_subfolder`).

    budget: override the exported sparsity budget (0 = dense, 1 = the target bands).
    psa: False returns the model without PSA (dense attention).
    """
    from ..attention import PSAConfig
    from ..models import enable_psa
    from ..models.wan import load_wan_transformer, resolve_dtype

    folder = _local_folder(path_or_repo_id, revision, token)
    psa_dict, info = read_export(folder)
    library = info.get("library_name", "diffusers")
    model_class = info.get("model_class", "WanTransformer3DModel")
    dtype = resolve_dtype(torch_dtype)
    if library == "transformers":  # a VideoClassifier export
        from .vit import load_exported

        model = load_exported(folder, info, dtype)
    elif library != "diffusers" or model_class != "WanTransformer3DModel":
        raise ValueError(f"{folder}: exported {library} {model_class}; this version loads diffusers "
                         "WanTransformer3DModel and transformers (VideoClassifier) exports")
    elif info.get("weights") == "lora_adapter":
        source, subfolder = _base_source(info, base_model)
        if base_subfolder is not None:
            subfolder = base_subfolder
        model = load_wan_transformer(source, torch_dtype=dtype, subfolder=subfolder)
        lora = info.get("lora") or {}
        model.load_lora_adapter(
            str(folder),
            weight_name=lora.get("adapter_weight_name") or LORA_WEIGHT_NAME,
            prefix=lora.get("prefix", LORA_PREFIX),
            adapter_name="default",
        )
    else:
        from diffusers import WanTransformer3DModel

        model = WanTransformer3DModel.from_pretrained(str(folder), torch_dtype=dtype)
    if device is not None:
        model.to(device)
    model.eval()
    if psa:
        config = PSAConfig.from_dict(psa_dict)
        if budget is not None:
            config = config.replace(budget=budget)
        enable_psa(model, config)
    return model
