"""A training step never waits for the GPU between its forward and its backward pass.

Such a wait (an `.item()`, a `.tolist()`, a copy from pageable memory) idles the GPU while the host
catches up; at short sequences, where launches dominate, such waits made the VideoMAE step with PSA
12-14 % slower than the dense one under CUDA graphs (4 % without them; BENCHMARKS.md). CUDA's sync
debug mode turns every such wait inside the window into an error: from the start of the batch
(after the annealing callback has set the budget) to the end of the backward pass.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from classifier_helpers import _clips, _model
from synthetic_latents import SyntheticLatents
from torch.utils.data import DataLoader

from psa_train.callbacks import SparsityAnnealing
from psa_train.modules import DistillationModule

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


class _NoSyncWindow(pl.Callback):
    """Sync debug mode "error" from each batch start to the end of its backward pass, from the
    third step on (the first steps build the cached tables, compile and record the CUDA graphs)."""

    def __init__(self, first_step: int = 2) -> None:
        self.first_step = first_step
        self.windows = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.first_step:
            torch.cuda.set_sync_debug_mode("error")

    def on_after_backward(self, trainer, pl_module) -> None:
        if torch.cuda.get_sync_debug_mode() != 0:
            torch.cuda.set_sync_debug_mode("default")
            self.windows += 1

    def on_exception(self, trainer, pl_module, exception) -> None:
        torch.cuda.set_sync_debug_mode("default")  # Lightning's teardown copies to the CPU


def _fit(module, **data) -> None:
    guard = _NoSyncWindow()
    annealing = SparsityAnnealing(start_budget=0.5, end_budget=1.0, start_step=0, end_step=3)
    trainer = pl.Trainer(max_steps=5, accelerator="gpu", devices=1, precision="bf16-mixed", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[annealing, guard])
    try:
        trainer.fit(module, **data)
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch._dynamo.reset()
    assert guard.windows == 3 and module.budget == 1.0
    assert "train/density" in trainer.logged_metrics and "psa/density" in trainer.logged_metrics


@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
def test_classifier_step_does_not_sync(compile_mode):
    video, labels = _clips(16)
    clips = [{"video": v, "kind": label} for v, label in zip(video, labels)]
    module = _model(label_key="kind", teacher="copy", kd_weight=0.1, compile=compile_mode)
    _fit(module, train_dataloaders=DataLoader(clips, batch_size=4))


@pytest.mark.parametrize("compile_mode", [None, "reduce-overhead"])
def test_distillation_step_does_not_sync(compile_mode):
    psa = {"block_m": 64, "block_n": 32, "layout": "tile", "tile_size": [1, 4, 4],
           "bands": {1: 0.2, 2: 0.1, 4: 0.1, 8: 0.2}}
    module = DistillationModule(model="tiny", psa=psa, lr=1e-3, compile=compile_mode)
    _fit(module, datamodule=SyntheticLatents(num_samples=8, batch_size=2))
