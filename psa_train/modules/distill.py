"""`DistillationModule`: distil a PSA student from its own dense teacher (Wan2.1 first).

The student is the backbone with PSA in its self-attention; the teacher is the same backbone
dense and frozen. With `trainable="lora"` they share one copy of the base weights: the teacher
is the student with its LoRA adapters and PSA switched off. With `trainable="full"` the teacher is
a separate frozen copy made before PSA is enabled (and is left out of Lightning checkpoints: it
is rebuilt from `model` when the module is constructed).

Per step: noise a clean latent to a flow-matching noise level (Wan's shifted schedule), run
teacher and student at the same noisy latent, timestep and text embedding, and minimise
`distill_weight * MSE(student, teacher) + flow_matching_weight * MSE(student, noise - x0)`.
All randomness of a step (noise level, noise, CFG dropout) comes from a generator keyed on
(seed, global step, rank), so a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, Literal, Mapping

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from ..attention import PSAConfig
from ..models.wan import (
    cast_like_from_pretrained,
    enable_psa_wan,
    load_wan_transformer,
    psa_budget,
    psa_density,
    psa_disabled,
    psa_layers,
    resolve_dtype,
    set_psa_budget,
)
from ..step_logging import log_psa, on_device
from . import schedules
from .compiling import CompiledNetworks, compile_networks, compile_options
from .errors import ConfigError
from .optim import adamw_with_schedule

TRAINABLE = ("full", "lora")
PSA_PRESETS = ("default", "default_quota", "wan21_1_3b")
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CHECKPOINT_KEY = "psa_train"


def build_psa_config(preset: str = "default", overrides: Mapping[str, Any] | PSAConfig | None = None) -> PSAConfig:
    """A `PSAConfig` from a preset name plus a dict of field overrides (unknown keys raise)."""
    if isinstance(overrides, PSAConfig):
        return overrides
    if preset not in PSA_PRESETS:
        raise ConfigError(f"psa_preset must be one of {PSA_PRESETS}, got {preset!r}")
    overrides = dict(overrides or {})
    try:
        if preset == "default":
            return PSAConfig.from_dict(overrides)
        base = getattr(PSAConfig, preset)().to_dict()
        return PSAConfig.from_dict({**base, **overrides})
    except ValueError as err:
        raise ConfigError(f"model.psa: {err}") from err


class DistillationModule(CompiledNetworks, pl.LightningModule):
    """Distil a PSA student from its dense teacher.

    Args:
      model: diffusers model id or local folder (`from_pretrained(..., subfolder)`), a
        `WanTransformer3DModel` config dict, or a named config ("tiny", "wan21-1.3b-arch", ...).
      subfolder: subfolder of a pretrained pipeline that holds the transformer.
      torch_dtype: dtype the weights are loaded in (None: as stored / float32 for configs).
      teacher_dtype: dtype of the frozen teacher copy when trainable="full" (e.g. "bfloat16").
      psa_preset: base PSA configuration: "default" (PSAConfig defaults), "default_quota" or
        "wan21_1_3b" (the paper's Wan2.1-1.3B threshold bands, Gilbert layout).
      psa: PSAConfig fields that override the preset (band_mode, bands, layout, budget, ...).
      trainable: "full" (all student weights, separate frozen teacher) or "lora".
      lora_rank, lora_alpha, lora_dropout, lora_target_modules: peft LoRA settings.
      distill_weight: weight of MSE(student velocity, teacher velocity).
      flow_matching_weight: weight of MSE(student velocity, noise - x0) (0 = off).
      timestep_shift: Wan's flow-matching shift (3.0 for 480p, 5.0 for 720p).
      timestep_sampling: "uniform" or "logit_normal" before the shift.
      cfg_dropout: probability of zeroing a sample's text embedding (classifier-free guidance).
      lr, betas, weight_decay, eps: AdamW.
      warmup_steps, lr_schedule ("constant" | "cosine"), min_lr_ratio: LambdaLR per step.
      gradient_checkpointing: activation checkpointing of the student's transformer blocks.
      seed: seed of the per-step noise generator (with the global step and the rank).
      compile: torch.compile the student and teacher transformers: null (eager), true, a mode
        name or a dict of torch.compile arguments (`psa_train.modules.compiling`).
    """

    def __init__(
        self,
        model: str | dict[str, Any] = "tiny",
        subfolder: str | None = "transformer",
        torch_dtype: str | None = None,
        teacher_dtype: str | None = None,
        psa_preset: Literal["default", "default_quota", "wan21_1_3b"] = "default",
        psa: dict[str, Any] | None = None,
        trainable: Literal["full", "lora"] = "full",
        lora_rank: int = 32,
        lora_alpha: float = 32.0,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        distill_weight: float = 1.0,
        flow_matching_weight: float = 0.0,
        timestep_shift: float = 3.0,
        timestep_sampling: Literal["uniform", "logit_normal"] = "uniform",
        cfg_dropout: float = 0.1,
        lr: float = 1e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        min_lr_ratio: float = 0.0,
        gradient_checkpointing: bool = False,
        seed: int = 0,
        compile: bool | str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.compile_kwargs = compile_options(compile)
        if trainable not in TRAINABLE:
            raise ConfigError(f"model.trainable must be one of {TRAINABLE}, got {trainable!r}")
        if timestep_sampling not in schedules.TIMESTEP_SAMPLINGS:
            raise ConfigError(
                f"model.timestep_sampling must be one of {schedules.TIMESTEP_SAMPLINGS}, got {timestep_sampling!r}"
            )
        if lr_schedule not in schedules.LR_SCHEDULES:
            raise ConfigError(f"model.lr_schedule must be one of {schedules.LR_SCHEDULES}, got {lr_schedule!r}")
        if not 0.0 <= cfg_dropout <= 1.0:
            raise ConfigError(f"model.cfg_dropout must be in [0, 1], got {cfg_dropout}")
        if distill_weight < 0 or flow_matching_weight < 0 or distill_weight + flow_matching_weight == 0:
            raise ConfigError("model.distill_weight and model.flow_matching_weight must be >= 0 and not both 0")
        if timestep_shift <= 0:
            raise ConfigError(f"model.timestep_shift must be > 0, got {timestep_shift}")
        self.psa_config = build_psa_config(psa_preset, psa)
        self.save_hyperparameters()
        # hparams hold only init arguments (LightningCLI feeds a checkpoint's hparams back into
        # __init__) and stay YAML-plain; the resolved PSA config goes into checkpoint["psa_train"].
        if isinstance(psa, PSAConfig):
            self.hparams["psa"] = psa.to_dict()

        student = load_wan_transformer(model, torch_dtype=torch_dtype, subfolder=subfolder)
        self.teacher: nn.Module | None = None
        if trainable == "full":
            self.teacher = copy.deepcopy(student)
            if teacher_dtype is not None:
                cast_like_from_pretrained(self.teacher, resolve_dtype(teacher_dtype))
            self.teacher.requires_grad_(False).eval()
        else:
            from peft import LoraConfig

            student.requires_grad_(False)
            student.add_adapter(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha,
                    lora_dropout=lora_dropout,
                    target_modules=list(lora_target_modules or DEFAULT_LORA_TARGETS),
                    init_lora_weights=True,
                )
            )
        enable_psa_wan(student, self.psa_config)
        if gradient_checkpointing:
            student.enable_gradient_checkpointing()
        self.student = student
        compile_networks(self.compile_kwargs, self.student, self.teacher)

    # ------------------------------------------------------------------------------------
    # teacher / student
    # ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _teacher_mode(self) -> Iterator[nn.Module]:
        """The dense teacher: the frozen copy, or the student with adapters and PSA off."""
        if self.teacher is not None:
            yield self.teacher
            return
        with psa_disabled(self.student):
            self.student.disable_adapters()
            try:
                yield self.student
            finally:
                self.student.enable_adapters()

    def teacher_forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self._teacher_mode() as teacher:
            dtype = next(teacher.parameters()).dtype
            out = teacher(noisy.to(dtype), timesteps, text.to(dtype), return_dict=False)[0]
        return out.float()

    def student_forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.student(noisy, timesteps, text, return_dict=False)[0].float()

    def probe_student(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Student velocity at the batch's fixed validation draws (AttentionStats' probe)."""
        _, _, noisy, timesteps, text = self._inputs(batch, "validate", 0)
        return self.student_forward(noisy, timesteps, text)

    def psa_layers(self) -> list:
        """The student's PSA layers (the teacher has none): what the callbacks steer and read."""
        return psa_layers(self.student)

    @property
    def budget(self) -> float | None:
        return psa_budget(self.student)

    def set_budget(self, budget: float) -> None:
        set_psa_budget(self.student, budget)

    # ------------------------------------------------------------------------------------
    # the loss
    # ------------------------------------------------------------------------------------
    def _generator(self, device: torch.device, stage: str, batch_idx: int = 0) -> torch.Generator:
        """Generator for one step's draws, keyed on (seed, stage, counter, rank).

        The counter is the global step in training (so a resumed run draws what the
        uninterrupted run drew) and the batch index in validation/test/predict (the same draws
        for the same batch at every evaluation, so the numbers are comparable).
        """
        offset = {"fit": 0, "validate": 1, "test": 2, "predict": 3}[stage]
        counter = int(self.global_step) if stage == "fit" else int(batch_idx)
        key = (int(self.hparams.seed) * 0x9E3779B1 + offset * 0x85EBCA77 + counter) * 0xC2B2AE3D
        key = (key + int(self.global_rank)) % (2**63 - 1)
        gen = torch.Generator(device=device)
        gen.manual_seed(key)
        return gen

    def _inputs(self, batch: Mapping[str, torch.Tensor], stage: str, batch_idx: int = 0):
        latents = batch["latents"]
        text = batch["text_embeds"]
        if "text_mask" in batch:
            text = text * batch["text_mask"].unsqueeze(-1).to(text.dtype)
        gen = self._generator(latents.device, stage, batch_idx)
        b = latents.shape[0]
        sigmas = schedules.sample_sigmas(
            b, self.hparams.timestep_shift, self.hparams.timestep_sampling, generator=gen, device=latents.device
        )
        noise = torch.randn(latents.shape, generator=gen, device=latents.device, dtype=latents.dtype)
        if stage == "fit" and self.hparams.cfg_dropout > 0:
            keep = torch.rand(b, generator=gen, device=latents.device) >= self.hparams.cfg_dropout
            text = text * keep.to(text.dtype).view(b, 1, 1)
        noisy = schedules.add_noise(latents, noise, sigmas)
        timesteps = schedules.sigmas_to_timesteps(sigmas)
        return latents, noise, noisy, timesteps, text

    def compute_losses(self, batch: Mapping[str, torch.Tensor], stage: str = "fit", batch_idx: int = 0):
        latents, noise, noisy, timesteps, text = self._inputs(batch, stage, batch_idx)
        hp = self.hparams
        losses: dict[str, torch.Tensor] = {}
        student = self.student_forward(noisy, timesteps, text)
        total = student.new_zeros(())
        if hp.distill_weight > 0:
            teacher = self.teacher_forward(noisy, timesteps, text)
            losses["distill_loss"] = F.mse_loss(student, teacher)
            total = total + hp.distill_weight * losses["distill_loss"]
        if hp.flow_matching_weight > 0:
            target = schedules.velocity_target(latents, noise).float()
            losses["flow_matching_loss"] = F.mse_loss(student, target)
            total = total + hp.flow_matching_weight * losses["flow_matching_loss"]
        losses["loss"] = total
        return losses

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch, "fit")
        b = batch["latents"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), on_step=True, prog_bar=name == "loss", batch_size=b)
        self.log("train/lr", on_device(self.optimizers().param_groups[0]["lr"], self), on_step=True, batch_size=b)
        log_psa(self, "train", b, self.budget, psa_layers(self.student))
        return losses["loss"]

    def _eval_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int, stage: str, prefix: str):
        losses = self.compute_losses(batch, stage, batch_idx)
        b = batch["latents"].shape[0]
        for name, value in losses.items():
            self.log(f"{prefix}/{name}", value, on_epoch=True, sync_dist=True, batch_size=b)
        log_psa(self, prefix, b, self.budget, psa_layers(self.student))
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, batch_idx, "validate", "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, batch_idx, "test", "test")

    def predict_step(self, batch, batch_idx):
        """Student and teacher velocities at the (fixed-seed) noisy latents of the batch."""
        _, _, noisy, timesteps, text = self._inputs(batch, "predict", batch_idx)
        return {
            "timesteps": timesteps,
            "student": self.student_forward(noisy, timesteps, text),
            "teacher": self.teacher_forward(noisy, timesteps, text),
        }

    # ------------------------------------------------------------------------------------
    # optimisation
    # ------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def configure_optimizers(self):
        hp = self.hparams
        params = self.trainable_parameters()
        if not params:
            raise ConfigError("the student has no trainable parameters")
        return adamw_with_schedule(self, [{"params": params, "weight_decay": hp.weight_decay}])

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
            "density": psa_density(self.student),
            "trainable": self.hparams.trainable,
        }
        # The frozen full-mode teacher is rebuilt from `model` at construction; don't store it.
        state = checkpoint.get("state_dict")
        if state is not None and self.teacher is not None:
            for key in [k for k in state if k.startswith("teacher.")]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None and self.teacher is not None and not any(k.startswith("teacher.") for k in state):
            state.update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        info = checkpoint.get(CHECKPOINT_KEY)
        if info and info.get("budget") is not None:
            self.set_budget(float(info["budget"]))

