"""AdamW with warm-up then constant or cosine learning rate, stepped every optimizer step."""

from __future__ import annotations

from typing import Any, Iterable

import lightning.pytorch as pl
import torch

from . import schedules


def adamw_with_schedule(module: pl.LightningModule, param_groups: Iterable[dict[str, Any]]) -> dict:
    """What `configure_optimizers` returns, from the module's hparams (lr, betas, eps,
    warmup_steps, lr_schedule, min_lr_ratio). The cosine length is the trainer's max_steps, or
    its estimate of the run's steps."""
    hp = module.hparams
    optimizer = torch.optim.AdamW(list(param_groups), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
    total = None
    trainer = module._trainer
    if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
        total = trainer.max_steps
    elif hp.lr_schedule == "cosine" and trainer is not None:
        total = int(trainer.estimated_stepping_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedules.lr_lambda(hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
