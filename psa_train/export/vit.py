"""Export and reload of `VideoClassifier` runs (PSA vision encoders, HF transformers).

The student is rebuilt as the run built it (`build_video_classifier`, weights from the
checkpoint) and written in transformers' own format:

- VideoMAE (`VideoMAEForVideoClassification`, a `PreTrainedModel`): `save_pretrained` into the
  folder itself (config.json + safetensors), loadable with
  `AutoModelForVideoClassification.from_pretrained(folder)`;
- image encoders per frame (`FrameEncoderClassifier`, not a `PreTrainedModel`): the encoder's
  `save_pretrained` into `encoder/`, the head (`fc_norm`, `classifier`) as `head.safetensors`
  and `head.json` (class, hidden_size, num_classes) describing it. An encoder that is not a
  `PreTrainedModel` itself (e.g. SigLIP's vision tower) is refused with a clear error.

`psa_train.json` says `library_name: transformers` and the `model_class`; `from_pretrained`
rebuilds the model from that and enables PSA with `enable_psa_vit` at the exported budget.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .folder import ExportError, source_reference

MODULE_NAME = "VideoClassifier"
ENCODER_FOLDER = "encoder"
HEAD_WEIGHTS = "head.safetensors"
HEAD_INFO = "head.json"
FRAME_ENCODER_CLASS = "FrameEncoderClassifier"


def is_video_classifier_run(class_path: str, hparams: Mapping[str, Any]) -> bool:
    """A VideoClassifier run: by the recipe's/checkpoint's class path, else by its hparams."""
    if class_path:
        return str(class_path).endswith(MODULE_NAME)
    return "backbone" in hparams and "num_classes" in hparams and "model" not in hparams


def resolve_args(recipe: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """VideoClassifier init args: defaults < recipe model.init_args < checkpoint hparams."""
    from ..modules.video_classifier import VideoClassifier

    params = inspect.signature(VideoClassifier.__init__).parameters
    args = {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}
    section = recipe.get("model") or {}
    init_args = section.get("init_args", section if "class_path" not in section else {}) or {}
    args.update({k: v for k, v in init_args.items() if k in args})
    args.update({k: v for k, v in hparams.items() if k in args})
    return args


def build_student(args: Mapping[str, Any], student_state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The run's student (no PSA: it adds no weights) with the checkpoint's weights, strictly."""
    from ..modules.video_classifier import _dtype, build_video_classifier

    if not student_state:
        raise ExportError("the checkpoint holds no student weights (no 'student.' entries in its state dict)")
    net = build_video_classifier(
        args["backbone"], int(args["num_classes"]), _dtype(args.get("torch_dtype"), "torch_dtype"),
        bool(args.get("ignore_mismatched_sizes", True)),
    )
    missing, unexpected = net.load_state_dict(dict(student_state), strict=False)
    if missing or unexpected:
        raise ExportError(
            f"the checkpoint's student does not match the model built from the recipe ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[:3]}); do backbone/num_classes match the run?"
        )
    return net


def _pretrained(module: nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(module, PreTrainedModel)


def save_student(net: nn.Module, output: Path, max_shard_size: str | int = "5GB") -> tuple[str, list[str]]:
    """Write the student; returns (model_class, weight files relative to `output`)."""
    from safetensors.torch import save_file

    from ..modules.video_classifier import FrameEncoderClassifier

    inner = getattr(net, "model", None)
    if inner is not None and _pretrained(inner):  # _VideoMAEHead
        inner.save_pretrained(str(output), safe_serialization=True, max_shard_size=max_shard_size)
        return type(inner).__name__, sorted(p.name for p in output.glob("*.safetensors"))
    if _pretrained(net):
        net.save_pretrained(str(output), safe_serialization=True, max_shard_size=max_shard_size)
        return type(net).__name__, sorted(p.name for p in output.glob("*.safetensors"))
    if isinstance(net, FrameEncoderClassifier):
        if not _pretrained(net.encoder):
            raise ExportError(
                f"cannot export {FRAME_ENCODER_CLASS} whose encoder is {type(net.encoder).__name__}, not a "
                "transformers PreTrainedModel (it has no save_pretrained)"
            )
        enc_dir = output / ENCODER_FOLDER
        net.encoder.save_pretrained(str(enc_dir), safe_serialization=True, max_shard_size=max_shard_size)
        head = {f"{name}.{k}": v.detach().contiguous() for name in ("fc_norm", "classifier")
                for k, v in getattr(net, name).state_dict().items()}
        save_file(head, str(output / HEAD_WEIGHTS), metadata={"format": "pt"})
        (output / HEAD_INFO).write_text(json.dumps({
            "class": FRAME_ENCODER_CLASS,
            "encoder_class": type(net.encoder).__name__,
            "encoder_folder": ENCODER_FOLDER,
            "hidden_size": int(net.fc_norm.normalized_shape[0]),
            "num_classes": int(net.classifier.out_features),
            "input": "pixel_values [B, T, C, H, W] -> logits [B, num_classes]",
        }, indent=2) + "\n")
        files = sorted(f"{ENCODER_FOLDER}/{p.name}" for p in enc_dir.glob("*.safetensors"))
        return FRAME_ENCODER_CLASS, files + [HEAD_WEIGHTS]
    raise ExportError(f"cannot export a VideoClassifier student of class {type(net).__name__}")


def base_model_reference(args: Mapping[str, Any]) -> dict[str, Any]:
    """Like the Wan export's: {"id", "path", "named_config", "subfolder"} of the backbone."""
    from ..modules.video_classifier import NAMED_BACKBONES

    return source_reference(args.get("backbone"), lambda s: isinstance(s, str) and s in NAMED_BACKBONES)


def load_exported(folder: Path, info: Mapping[str, Any], dtype: torch.dtype | None) -> nn.Module:
    """The exported student (no PSA yet) from a transformers export folder."""
    import transformers

    model_class = info.get("model_class")
    if model_class == FRAME_ENCODER_CLASS:
        from safetensors.torch import load_file

        from ..modules.video_classifier import FrameEncoderClassifier

        head = json.loads((folder / HEAD_INFO).read_text())
        encoder = transformers.AutoModel.from_pretrained(str(folder / head.get("encoder_folder", ENCODER_FOLDER)),
                                                         dtype=dtype)
        net = FrameEncoderClassifier(encoder, int(head["hidden_size"]), int(head["num_classes"]))
        missing, unexpected = net.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)), strict=False)
        if unexpected or any(not k.startswith("encoder.") for k in missing):
            raise ValueError(f"{folder / HEAD_WEIGHTS} does not match {FRAME_ENCODER_CLASS}'s head")
        if dtype is not None:
            net.to(dtype)
        return net
    cls = getattr(transformers, str(model_class), None) or transformers.AutoModelForVideoClassification
    return cls.from_pretrained(str(folder), dtype=dtype)
