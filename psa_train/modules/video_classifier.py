"""`VideoClassifier`: finetune (and optionally distil) a PSA video encoder for classification.

The student is a vision backbone with PSA in its self-attention (`psa_train.models.vit`) plus a
linear head. VideoMAE sees the whole clip (its own `VideoMAEForVideoClassification` head: mean
pooling, LayerNorm, Linear); image encoders (ViT, DINOv2, SigLIP) see each frame, and their mean
token, averaged over frames, goes through LayerNorm + Linear.

Loss = `ce_weight * CE(student logits, labels) + kd_weight * T^2 * KL(p_teacher || p_student)`,
with p = softmax(logits / T) (Hinton-style distillation; T = `kd_temperature`).

Teacher (`teacher`):
  - "copy": a separate frozen copy of the backbone + head, made before PSA is enabled (dense,
    optionally in `teacher_dtype`). It stays the model you started from, which is what
    "sparse student ≈ dense model" distillation needs, at the cost of a second set of weights
    (no gradients or optimizer state). Use it when the starting model already solves the task
    (e.g. a Kinetics-finetuned VideoMAE). Left out of checkpoints when it can be reloaded from
    `backbone` (an HF id or folder), kept otherwise.
  - "shared": the student itself with PSA switched off (same current weights, no extra memory).
    The target moves with the student, so the KL is a dense/sparse consistency term, not an
    anchor to the original model; pair it with labels.
  - "none": no teacher (kd_weight must be 0).

Batches are those of `psa_train.data.VideoShardDataModule`: `video` [B, 3, T, H, W] in [-1, 1]
and labels: batch[label_key] or the DataModule's "label" (LongTensor [B]), or else each sample's
json `meta[label_key]` (e.g. "shape" of the demo data).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Literal, Mapping, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from ..attention import PSAConfig
from ..models import vit as vit_psa
from ..step_logging import log_psa, on_device
from . import schedules
from .compiling import CompiledNetworks, compile_networks, compile_options
from .distill import ConfigError, build_psa_config
from .optim import adamw_with_schedule

TEACHERS = ("none", "copy", "shared")
CHECKPOINT_KEY = "psa_train"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HF_VIDEOMAE_BASE = "MCG-NJU/videomae-base"
HF_VIDEOMAE_BASE_K400 = "MCG-NJU/videomae-base-finetuned-kinetics"

# A tiny VideoMAE for CPU tests and the demo recipe: 8 frames of 64x64, tubelet 2, patch 8 -> a
# 4 x 8 x 8 token grid (256 tokens); one head of 64 (the Triton kernels' head dim), two layers.
TINY_VIDEOMAE_CONFIG: dict[str, Any] = {
    "model_type": "videomae",
    "image_size": 64,
    "patch_size": 8,
    "num_frames": 8,
    "tubelet_size": 2,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "intermediate_size": 128,
    "use_mean_pooling": True,
}
# VideoMAE-B (ViT-B/16, 16 frames at 224^2, tubelet 2 -> 8 x 14 x 14 = 1568 tokens).
VIDEOMAE_BASE_CONFIG: dict[str, Any] = {
    "model_type": "videomae",
    "image_size": 224,
    "patch_size": 16,
    "num_frames": 16,
    "tubelet_size": 2,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "use_mean_pooling": True,
}
NAMED_BACKBONES = {"tiny": TINY_VIDEOMAE_CONFIG, "videomae-base-arch": VIDEOMAE_BASE_CONFIG}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _dtype(name: str | None, key: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in _DTYPES:
        raise ConfigError(f"model.{key} must be one of {sorted(_DTYPES)} or null, got {name!r}")
    return _DTYPES[name]


class FrameEncoderClassifier(nn.Module):
    """An image encoder applied to every frame; mean token, averaged over frames -> LayerNorm -> Linear."""

    def __init__(self, encoder: nn.Module, hidden_size: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.fc_norm = nn.LayerNorm(hidden_size)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # [B, T, C, H, W]
        b, t = pixel_values.shape[:2]
        hidden = self.encoder(pixel_values=pixel_values.flatten(0, 1)).last_hidden_state  # [B*T, L, C]
        features = hidden.mean(1).unflatten(0, (b, t)).mean(1)
        return self.classifier(self.fc_norm(features))


class _VideoMAEHead(nn.Module):
    """`VideoMAEForVideoClassification` returning logits only (its own pooling and head)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        for module in model.modules():
            _table_as_buffer(module, "position_embeddings")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _table_as_buffer(module: nn.Module, name: str) -> None:
    """Register a plain tensor attribute (VideoMAE's fixed sinusoid table) as a non-persistent
    buffer. As an attribute it stays on the CPU and every forward copies it to the GPU from
    pageable memory, which waits for the GPU mid-step; a buffer moves with the model, and the
    state dict is unchanged."""
    table = getattr(module, name, None)
    if isinstance(table, torch.Tensor) and name not in module._parameters and name not in module._buffers:
        delattr(module, name)
        module.register_buffer(name, table, persistent=False)


def build_video_classifier(
    backbone: str | Mapping[str, Any],
    num_classes: int,
    torch_dtype: torch.dtype | None = None,
    ignore_mismatched_sizes: bool = True,
) -> nn.Module:
    """Backbone + head mapping pixel_values [B, T, C, H, W] to logits [B, num_classes].

    backbone: an HF model id or local folder (VideoMAE: `VideoMAEForVideoClassification` with
    `num_labels=num_classes`, a mismatched head re-initialised; ViT / DINOv2 / SigLIP: their
    vision encoder per frame + a new head), a config dict (`model_type` plus that config's fields;
    "videomae" if absent; random weights) or a named config: "tiny", "videomae-base-arch".
    """
    from transformers import AutoConfig, AutoModel, VideoMAEForVideoClassification

    if isinstance(backbone, str) and backbone in NAMED_BACKBONES:
        backbone = NAMED_BACKBONES[backbone]
    if isinstance(backbone, Mapping):
        fields = dict(backbone)
        model_type = fields.pop("model_type", "videomae")
        for key in ("image_size", "patch_size"):
            if isinstance(fields.get(key), list):
                fields[key] = tuple(fields[key])
        try:
            config = AutoConfig.for_model(model_type, **fields)
        except ValueError as err:
            raise ConfigError(f"model.backbone: {err}") from err
        default = type(config)()
        unknown = sorted(k for k in fields if k not in default.to_dict() and not hasattr(default, k))
        if unknown:
            raise ConfigError(f"model.backbone: unknown {model_type} config keys {unknown}")
        pretrained = False
    elif isinstance(backbone, str):
        config = AutoConfig.from_pretrained(backbone)
        pretrained = True
    else:
        raise ConfigError(f"model.backbone must be an HF id, a folder, a config dict or one of "
                          f"{sorted(NAMED_BACKBONES)}, got {type(backbone).__name__}")

    if config.model_type == "videomae":
        config.num_labels = num_classes
        if pretrained:
            model = VideoMAEForVideoClassification.from_pretrained(
                backbone, config=config, ignore_mismatched_sizes=ignore_mismatched_sizes, dtype=torch_dtype
            )
        else:
            model = VideoMAEForVideoClassification(config)
        net: nn.Module = _VideoMAEHead(model)
    else:
        if pretrained:
            encoder = AutoModel.from_pretrained(backbone, dtype=torch_dtype)
        else:
            encoder = AutoModel.from_config(config)
        encoder = getattr(encoder, "vision_model", encoder)  # SiglipModel / CLIP-like: the vision tower
        hidden = getattr(getattr(encoder, "config", config), "hidden_size", None) or config.hidden_size
        net = FrameEncoderClassifier(encoder, hidden, num_classes)
    if not vit_psa.is_vision_encoder(net):
        raise ConfigError(f"model.backbone: {config.model_type} is not a supported vision encoder "
                          f"({vit_psa.SUPPORTED_VIT})")
    if torch_dtype is not None:
        net.to(torch_dtype)
    return net


class VideoClassifier(CompiledNetworks, pl.LightningModule):
    """Video classification with a PSA student (and an optional dense teacher).

    Args:
      backbone: HF model id or folder, a config dict (`model_type` + fields), or "tiny" /
        "videomae-base-arch" (random weights).
      num_classes: classes of the linear head.
      label_key: the label field, e.g. "shape" of the demo json or "cls". Labels are taken from
        batch[label_key], else batch["label"] (what `VideoShardDataModule(label_key=...)` emits; give
        both the same label_key, Lightning requires shared hparams to agree), else each sample's
        json `meta[label_key]`.
      torch_dtype: dtype the student is loaded in (null: float32; use trainer precision for AMP).
      ignore_mismatched_sizes: re-initialise a pretrained head whose size differs from num_classes.
      teacher: "none" | "copy" | "shared" (see the module docstring).
      teacher_dtype: dtype of the "copy" teacher (e.g. "bfloat16" to halve its memory).
      psa_preset, psa: base PSAConfig and field overrides (as in the distillation module);
        prefix_tokens is set by the backbone family.
      ce_weight, label_smoothing: cross-entropy on labels.
      kd_weight, kd_temperature: KL to the teacher's logits (scaled by T^2).
      pixel_mean, pixel_std: normalisation of [0, 1] pixels (ImageNet's by default, as VideoMAE).
      lr, betas, weight_decay, eps: AdamW (no weight decay on biases, norms, tokens: 1-D params).
      warmup_steps, lr_schedule ("constant" | "cosine"), min_lr_ratio: per-step LambdaLR.
      gradient_checkpointing: activation checkpointing in the student's encoder layers.
      compile: torch.compile the student and teacher networks: null (eager), true, a mode
        ("reduce-overhead": CUDA graphs, what 1-2k-token clips need) or a dict of torch.compile
        arguments (`psa_train.modules.compiling`).
    """

    def __init__(
        self,
        backbone: str | dict[str, Any] = "tiny",
        num_classes: int = 6,
        label_key: str = "label",
        torch_dtype: str | None = None,
        ignore_mismatched_sizes: bool = True,
        teacher: Literal["none", "copy", "shared"] = "none",
        teacher_dtype: str | None = None,
        psa_preset: Literal["default", "default_quota", "wan21_1_3b"] = "default",
        psa: dict[str, Any] | None = None,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.0,
        kd_weight: float = 0.0,
        kd_temperature: float = 1.0,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.05,
        eps: float = 1e-8,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        min_lr_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        compile: bool | str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.compile_kwargs = compile_options(compile)
        if num_classes < 2:
            raise ConfigError(f"model.num_classes must be >= 2, got {num_classes}")
        if teacher not in TEACHERS:
            raise ConfigError(f"model.teacher must be one of {TEACHERS}, got {teacher!r}")
        if ce_weight < 0 or kd_weight < 0 or ce_weight + kd_weight == 0:
            raise ConfigError("model.ce_weight and model.kd_weight must be >= 0 and not both 0")
        if kd_weight > 0 and teacher == "none":
            raise ConfigError("model.kd_weight > 0 needs a teacher: set model.teacher to 'copy' or 'shared'")
        if kd_temperature <= 0:
            raise ConfigError(f"model.kd_temperature must be > 0, got {kd_temperature}")
        if lr_schedule not in schedules.LR_SCHEDULES:
            raise ConfigError(f"model.lr_schedule must be one of {schedules.LR_SCHEDULES}, got {lr_schedule!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ConfigError("model.pixel_mean and model.pixel_std must be 3 numbers (std > 0)")
        self.psa_config: PSAConfig = build_psa_config(psa_preset, psa)
        # hparams stay YAML-plain (hparams.yaml is read back with safe_load): lists, not tuples
        betas, pixel_mean, pixel_std = list(betas), list(pixel_mean), list(pixel_std)
        self.save_hyperparameters()
        if isinstance(psa, PSAConfig):
            self.hparams["psa"] = psa.to_dict()

        student = build_video_classifier(
            backbone, num_classes, _dtype(torch_dtype, "torch_dtype"), ignore_mismatched_sizes
        )
        self.teacher: nn.Module | None = None
        if teacher == "copy":
            self.teacher = copy.deepcopy(student)
            if teacher_dtype is not None:
                self.teacher.to(_dtype(teacher_dtype, "teacher_dtype"))
            self.teacher.requires_grad_(False).eval()
        vit_psa.enable_psa_vit(student, self.psa_config)
        if gradient_checkpointing:
            for module in student.modules():
                if callable(getattr(module, "gradient_checkpointing_enable", None)):
                    module.gradient_checkpointing_enable()
                    break
        self.student = student
        compile_networks(self.compile_kwargs, self.student, self.teacher)
        self._teacher_reloadable = isinstance(backbone, str) and backbone not in NAMED_BACKBONES
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, 1, 3, 1, 1), persistent=False)

        k = min(5, num_classes)
        self.top_k = k

        def accuracy(top_k: int) -> MulticlassAccuracy:  # share of samples right (micro), as usual
            return MulticlassAccuracy(num_classes, top_k=top_k, average="micro")

        self.val_acc1, self.val_acck, self.val_teacher_acc1 = accuracy(1), accuracy(k), accuracy(1)
        self.test_acc1, self.test_acck, self.test_teacher_acc1 = accuracy(1), accuracy(k), accuracy(1)

    # ------------------------------------------------------------------------------------
    # PSA hooks for the callbacks
    # ------------------------------------------------------------------------------------
    def psa_layers(self):
        """The student's PSA layers (SparsityAnnealing and AttentionStats steer/observe these)."""
        return vit_psa.psa_layers(self.student)

    def probe_student(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Student logits for a batch (AttentionStats' probe)."""
        return self.student_logits(batch)

    @property
    def budget(self) -> float | None:
        return vit_psa.psa_budget(self.student)

    def set_budget(self, budget: float) -> None:
        vit_psa.set_psa_budget(self.student, budget)

    # ------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------
    def pixel_values(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """`video` [B, 3, T, H, W] in [-1, 1] -> normalised pixel_values [B, T, 3, H, W]."""
        video = batch["video"]
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"batch['video'] must be [B, 3, T, H, W], got {tuple(video.shape)}")
        x = (video.transpose(1, 2).float() + 1.0) * 0.5
        return (x - self.pixel_mean) / self.pixel_std

    def labels(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """Labels [B]: batch[label_key], else the DataModule's batch["label"], else meta[label_key]."""
        key = self.hparams.label_key
        for name in (key, "label"):
            value = batch.get(name)
            if isinstance(value, torch.Tensor):
                return value.long().to(self.device)
        metas = batch.get("meta")
        if metas and all(isinstance(m, Mapping) and key in m for m in metas):
            return torch.tensor([int(m[key]) for m in metas], dtype=torch.long, device=self.device)
        return None

    def student_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        pixels = self.pixel_values(batch)
        dtype = next(self.student.parameters()).dtype
        return self.student(pixels.to(dtype)).float()

    @contextlib.contextmanager
    def _teacher_mode(self) -> Iterator[nn.Module]:
        if self.teacher is not None:
            yield self.teacher
            return
        with vit_psa.psa_disabled(self.student):
            yield self.student

    def teacher_logits(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if self.hparams.teacher == "none":
            raise RuntimeError("this VideoClassifier has no teacher (model.teacher: none)")
        pixels = self.pixel_values(batch)
        with torch.no_grad(), self._teacher_mode() as teacher:
            dtype = next(teacher.parameters()).dtype
            return teacher(pixels.to(dtype)).float()

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.student_logits(batch)

    # ------------------------------------------------------------------------------------
    # loss and steps
    # ------------------------------------------------------------------------------------
    def compute_losses(self, batch: Mapping[str, Any], labels: torch.Tensor | None):
        hp = self.hparams
        logits = self.student_logits(batch)
        losses: dict[str, torch.Tensor] = {}
        total = logits.new_zeros(())
        if hp.ce_weight > 0:
            if labels is None:
                raise ValueError(f"ce_weight > 0 needs labels: the batch has no {hp.label_key!r} "
                                 "(set the DataModule's label_key, or model.label_key to a json field)")
            losses["ce"] = F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing)
            total = total + hp.ce_weight * losses["ce"]
        teacher = None
        if hp.teacher != "none" and (hp.kd_weight > 0 or not self.training):
            teacher = self.teacher_logits(batch)
        if hp.kd_weight > 0:
            t = hp.kd_temperature
            losses["kd"] = F.kl_div(
                F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher / t, dim=-1),
                log_target=True, reduction="batchmean",
            ) * (t * t)
            total = total + hp.kd_weight * losses["kd"]
        losses["loss"] = total
        return losses, logits, teacher

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        labels = self.labels(batch)
        losses, logits, _ = self.compute_losses(batch, labels)
        b = logits.shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, prog_bar=name == "loss", batch_size=b)
        if labels is not None:
            # validate_args checks the labels on the host (a sync before the backward pass); with a
            # cross-entropy term, that term already rejects labels out of range
            acc = multiclass_accuracy(logits.detach(), labels, self.hparams.num_classes, average="micro",
                                      validate_args=self.hparams.ce_weight <= 0)
            self.log("train/acc1", acc, on_step=True, batch_size=b)
        if self._trainer is not None and self.trainer.optimizers:
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log("train/lr", on_device(lr, self), on_step=True, batch_size=b)
        log_psa(self, "train", b, self.budget, vit_psa.psa_layers(self.student))
        return losses["loss"]

    def _eval_step(self, batch: Mapping[str, Any], prefix: str) -> torch.Tensor:
        labels = self.labels(batch)
        hp = self.hparams
        if labels is None and hp.ce_weight > 0:
            raise ValueError(f"{prefix}: the batch has no labels {hp.label_key!r}")
        losses, logits, teacher = self.compute_losses(batch, labels)
        b = logits.shape[0]
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value, on_epoch=True, sync_dist=True, batch_size=b)
        if labels is not None:
            acc1, acck = (self.val_acc1, self.val_acck) if prefix == "val" else (self.test_acc1, self.test_acck)
            acc1(logits, labels)
            acck(logits, labels)
            self.log(f"{prefix}/acc1", acc1, on_epoch=True, prog_bar=prefix == "val", batch_size=b)
            self.log(f"{prefix}/acc{self.top_k}", acck, on_epoch=True, batch_size=b)
            if teacher is not None:
                teacher_acc = self.val_teacher_acc1 if prefix == "val" else self.test_teacher_acc1
                teacher_acc(teacher, labels)
                self.log(f"{prefix}/teacher_acc1", teacher_acc, on_epoch=True, batch_size=b)
        if teacher is not None:
            agreement = (logits.argmax(-1) == teacher.argmax(-1)).float().mean()
            self.log(f"{prefix}/agreement", agreement, on_epoch=True, sync_dist=True, batch_size=b)
        log_psa(self, prefix, b, self.budget, vit_psa.psa_layers(self.student))
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return {"logits": self.student_logits(batch), "key": batch.get("key")}

    # ------------------------------------------------------------------------------------
    # optimisation
    # ------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.student.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        if not decay and not no_decay:
            raise ConfigError("the student has no trainable parameters")
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return adamw_with_schedule(self, [g for g in groups if g["params"]])

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    # ------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "psa_config": self.psa_config.to_dict(),
            "budget": self.budget,
            "density": vit_psa.psa_density(self.student),
            "teacher": self.hparams.teacher,
        }
        state = checkpoint.get("state_dict")
        if state is not None and self.teacher is not None and self._teacher_reloadable:
            for key in [k for k in state if k.startswith("teacher.")]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None and self.teacher is not None and not any(k.startswith("teacher.") for k in state):
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        info = checkpoint.get(CHECKPOINT_KEY)
        if info and info.get("budget") is not None:
            self.set_budget(float(info["budget"]))
