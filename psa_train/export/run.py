"""`export_checkpoint`: a training checkpoint (+ its recipe and logs) -> an exported folder.

`DistillationModule` runs export as diffusers folders, `VideoClassifier` runs as transformers
folders (`.vit`). The model arguments are the module's defaults, overridden by the recipe's
`model.init_args`, overridden by the checkpoint's own `hyper_parameters` (what the run really
used, including command-line overrides the recipe file does not show).
"""

from __future__ import annotations

import inspect
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .consolidate import TrainingCheckpoint, load_training_checkpoint, submodule_state
from .folder import (
    EXPORT_INFO_NAME,
    PSA_CONFIG_NAME,
    ExportError,
    build_student,
    cast_for_export,
    export_info,
    exported_psa_config,
    save_adapter,
    save_full,
    write_json,
)
from .model_card import base_license, collect_run_metrics, render_model_card

SUPPORTED_MODULE = "DistillationModule"  # and VideoClassifier (see .vit)


@dataclass
class ExportResult:
    output: Path
    weights: str  # "full" | "lora_merged" | "lora_adapter"
    files: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    log_files: list[Path] = field(default_factory=list)


def read_recipe(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"recipe {str(path)!r} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ExportError(f"recipe {p} is not a YAML mapping")
    return data


def _module_defaults() -> dict[str, Any]:
    from ..modules.distill import DistillationModule

    params = inspect.signature(DistillationModule.__init__).parameters
    return {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}


def resolve_model_args(recipe: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """DistillationModule init args: defaults < recipe model.init_args < checkpoint hparams."""
    section = recipe.get("model") or {}
    if not isinstance(section, Mapping):
        raise ExportError(f"recipe 'model' must be a mapping, got {type(section).__name__}")
    class_path = section.get("class_path") or hparams.get("_class_path") or ""
    if class_path and not str(class_path).endswith(SUPPORTED_MODULE):
        raise ExportError(
            f"export supports psa_train.modules.{SUPPORTED_MODULE} (Wan students) and "
            f"psa_train.modules.video_classifier.VideoClassifier; the run's model is {class_path}"
        )
    init_args = section.get("init_args", section if "class_path" not in section else {}) or {}
    defaults = _module_defaults()
    args = dict(defaults)
    args.update({k: v for k, v in init_args.items() if k in defaults})
    args.update({k: v for k, v in hparams.items() if k in defaults})
    if not args.get("model"):
        raise ExportError("no model in the recipe or the checkpoint (model.init_args.model)")
    if args.get("trainable") == "lora" and not args.get("lora_target_modules"):
        from ..modules.distill import DEFAULT_LORA_TARGETS

        args["lora_target_modules"] = list(DEFAULT_LORA_TARGETS)
    return args


def log_roots(recipe: Mapping[str, Any], ckpt_path: str | os.PathLike) -> list[Path]:
    """Folders to search for the run's logs, best first: the recipe's logger folders, the
    trainer's default_root_dir, and the run folder above a `checkpoints/` folder."""
    roots: list[Path] = []
    trainer = recipe.get("trainer") or {}
    loggers = trainer.get("logger")
    if isinstance(loggers, Mapping):
        loggers = [loggers]
    for logger in loggers if isinstance(loggers, list) else []:
        init = logger.get("init_args", {}) if isinstance(logger, Mapping) else {}
        save_dir = init.get("save_dir") or init.get("root_dir")
        if not save_dir:
            continue
        p = Path(save_dir)
        name = init.get("name", "lightning_logs")
        if name:
            p = p / str(name)
        version = init.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            p = p / f"version_{version}"
        elif isinstance(version, str) and version:
            p = p / version
        roots.append(p)
    if trainer.get("default_root_dir"):
        roots.append(Path(trainer["default_root_dir"]))
    ckpt = Path(os.path.abspath(ckpt_path))
    if ckpt.parent.name == "checkpoints":
        roots.append(ckpt.parent.parent)
    return roots


def _prepare_output(output: Path, overwrite: bool) -> Path:
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"--output {output} is not empty (pass --overwrite to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.export-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    return staging


def _usual_permissions(folder: Path) -> None:
    """Files as an ordinary write would make them (some writers use private temp files)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.rglob("*"):
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def _publish(staging: Path, output: Path) -> None:
    """Move the complete export into place (the old folder, if any, goes only afterwards)."""
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output, old)
    os.rename(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_checkpoint(
    ckpt_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    config: str | os.PathLike | None = None,
    lora_only: bool = False,
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    logs: str | os.PathLike | None = None,
    overwrite: bool = False,
    repo_id: str | None = None,
    log=print,
) -> ExportResult:
    """Export a `psa-train fit` checkpoint (file or DeepSpeed folder) to `output`.

    repo_id: where the folder will be pushed (used in the model card's usage snippet).
    """
    output = Path(output)
    recipe = read_recipe(config)
    staging = _prepare_output(output, overwrite)
    try:
        log(f"reading checkpoint {ckpt_path}")
        ckpt: TrainingCheckpoint = load_training_checkpoint(ckpt_path, prefixes=("student.",))
        if _is_video_classifier(recipe, ckpt.hyper_parameters):
            if lora_only:
                raise ExportError("--lora-only needs a LoRA run; VideoClassifier runs train all weights")
            weights, files, info, psa_config = _save_video_classifier(ckpt, recipe, staging, dtype,
                                                                      max_shard_size, log)
        else:
            weights, files, info, psa_config = _save_distillation(ckpt, recipe, staging, lora_only, dtype,
                                                                  max_shard_size, log)
        write_json(staging / PSA_CONFIG_NAME, psa_config)
        write_json(staging / EXPORT_INFO_NAME, info)

        roots = [Path(logs)] if logs is not None else log_roots(recipe, ckpt_path)
        metrics, log_files = collect_run_metrics(roots)
        card = render_model_card(
            info, psa_config, where=repo_id or str(output), on_hub=repo_id is not None, metrics=metrics,
            license_=base_license(info["base_model"]),
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
        _usual_permissions(staging)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(output=output, weights=weights, files=files, info=info, log_files=log_files)


def _is_video_classifier(recipe: Mapping[str, Any], hparams: Mapping[str, Any]) -> bool:
    from .vit import is_video_classifier_run

    section = recipe.get("model") or {}
    class_path = (section.get("class_path") if isinstance(section, Mapping) else None) or hparams.get("_class_path") or ""
    return is_video_classifier_run(str(class_path), hparams)


def _save_video_classifier(ckpt, recipe, staging, dtype, max_shard_size, log):
    """Write a VideoClassifier's student in transformers' format; (weights, files, info, psa_config)."""
    from ..modules.distill import build_psa_config
    from ..models.wan import resolve_dtype
    from . import vit

    args = vit.resolve_args(recipe, ckpt.hyper_parameters)
    psa_info = dict(ckpt.psa_train)
    trained_config = psa_info.get("psa_config") or build_psa_config(args["psa_preset"], args["psa"]).to_dict()
    target_budget = float(trained_config.get("budget", 1.0))
    psa_config = exported_psa_config(trained_config, psa_info.get("budget")).to_dict()

    log(f"rebuilding the VideoClassifier student (backbone={args['backbone'] if isinstance(args['backbone'], str) else 'config dict'})")
    net = vit.build_student(args, submodule_state(ckpt.state_dict))
    ckpt.state_dict.clear()
    if dtype is not None:
        net.to(resolve_dtype(dtype))
    model_class, files = vit.save_student(net, staging, max_shard_size=max_shard_size)
    del net
    info = export_info(
        weights="full",
        weight_files=files,
        args={"trainable": "full"},
        psa_info=psa_info,
        target_budget=target_budget,
        global_step=ckpt.global_step,
        epoch=ckpt.epoch,
        checkpoint_kind=ckpt.kind if ckpt.zero_stage is None else f"deepspeed-zero{ckpt.zero_stage}",
        model_class=model_class,
    )
    info.update(library_name="transformers", backbone="vit", module=vit.MODULE_NAME,
                base_model=vit.base_model_reference(args), num_classes=int(args["num_classes"]),
                pixel_mean=list(args["pixel_mean"]), pixel_std=list(args["pixel_std"]))
    return "full", files, info, psa_config


def _save_distillation(ckpt, recipe, staging, lora_only, dtype, max_shard_size, log):
    """Write a DistillationModule's Wan student in diffusers' format; (weights, files, info, psa_config)."""
    args = resolve_model_args(recipe, ckpt.hyper_parameters)
    lora = args.get("trainable") == "lora"
    if lora_only and not lora:
        raise ExportError("--lora-only needs a LoRA run (model.trainable: lora); this run trained all weights")

    from ..modules.distill import build_psa_config

    psa_info = dict(ckpt.psa_train)
    trained_config = psa_info.get("psa_config") or build_psa_config(args["psa_preset"], args["psa"]).to_dict()
    target_budget = float(trained_config.get("budget", 1.0))
    psa_config = exported_psa_config(trained_config, psa_info.get("budget")).to_dict()

    log(f"rebuilding the student ({args['trainable']}, model={args['model'] if isinstance(args['model'], str) else 'config dict'})")
    model = build_student(args, submodule_state(ckpt.state_dict))
    ckpt.state_dict.clear()
    cast_for_export(model, dtype)
    if lora_only:
        weights, files = "lora_adapter", save_adapter(model, staging)
    else:
        weights = "lora_merged" if lora else "full"
        files = save_full(model, staging, max_shard_size=max_shard_size)
    del model

    info = export_info(
        weights=weights,
        weight_files=files,
        args=args,
        psa_info=psa_info,
        target_budget=target_budget,
        global_step=ckpt.global_step,
        epoch=ckpt.epoch,
        checkpoint_kind=ckpt.kind if ckpt.zero_stage is None else f"deepspeed-zero{ckpt.zero_stage}",
        model_class="WanTransformer3DModel",
    )
    return weights, files, info, psa_config
