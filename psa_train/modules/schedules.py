"""Small schedules for training: Wan's shifted flow-matching timesteps and the learning rate.

Flow matching (rectified flow) as Wan and diffusers' `FlowMatchEulerDiscreteScheduler` use it:
a noise level sigma in [0, 1] mixes data and noise, `x_t = (1 - sigma) * x0 + sigma * noise`, the
model predicts the velocity `noise - x0`, and the model's timestep input is `sigma * 1000`. The
shift moves sigmas toward the noisy end: `sigma = shift * u / (1 + (shift - 1) * u)` for a
uniform (or logit-normal) u, the formula of `FlowMatchEulerDiscreteScheduler` with `shift`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

NUM_TRAIN_TIMESTEPS = 1000
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
LR_SCHEDULES = ("constant", "cosine")


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan / SD3 timestep shift of sigmas in [0, 1] (shift 1 is the identity)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def sample_sigmas(
    batch_size: int,
    shift: float = 3.0,
    sampling: str = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    min_sigma: float = 0.0,
    max_sigma: float = 1.0,
) -> torch.Tensor:
    """Noise levels for a batch: u ~ U(min, max) (or sigmoid of a standard normal), then shifted."""
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLINGS}, got {sampling!r}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    if sampling == "uniform":
        u = torch.rand(batch_size, generator=generator, device=device)
    else:
        u = torch.sigmoid(torch.randn(batch_size, generator=generator, device=device))
    u = min_sigma + (max_sigma - min_sigma) * u
    return shift_sigmas(u, shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """`(1 - sigma) x0 + sigma noise`, sigma broadcast over all but the batch dimension."""
    s = sigmas.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching velocity d x_t / d sigma = noise - x0."""
    return noise - x0


def sigmas_to_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The transformer's timestep input (diffusers' convention: sigma * 1000)."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def lr_lambda(warmup_steps: int, total_steps: int | None, schedule: str = "constant",
              min_lr_ratio: float = 0.0) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step `step` (for `torch.optim.lr_scheduler.LambdaLR`).

    Linear warmup from 1/(warmup+1) to 1 over `warmup_steps`, then constant, or cosine decay to
    `min_lr_ratio` at `total_steps`.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if schedule == "cosine" and (total_steps is None or total_steps <= 0):
        raise ValueError("the cosine lr schedule needs total_steps > 0 (set trainer.max_steps)")

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn
