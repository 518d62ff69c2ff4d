"""`model.compile`: the LightningModules compile their networks in place and train as eager does.

CPU runs use dynamo's `aot_eager` backend (no C++ toolchain needed) over the reference PSA path;
the GPU test trains VideoMAE-B's architecture with CUDA graphs.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from classifier_helpers import PSA, _clips, _model
from one_thread import one_torch_thread  # noqa: F401  (autouse)
from synthetic_latents import SyntheticLatents
from test_compile import triton_selection  # noqa: F401  (fixture)
from torch._dynamo.utils import counters
from torch.utils.checkpoint import checkpoint
from torch.utils.data import DataLoader

from psa_train.attention import PSAAttention, PSAConfig
from psa_train.callbacks import AttentionStats, SparsityAnnealing
from psa_train.checkpointing import AtomicDeepSpeedStrategy
from psa_train.modules import ConfigError, DistillationModule
from psa_train.modules.compiling import check_strategy, compile_networks, compile_options, uses_cuda_graphs


def test_compile_option_values():
    assert compile_options(None) is None and compile_options(False) is None
    assert compile_options(True) == {"dynamic": False}
    assert compile_options("reduce-overhead") == {"mode": "reduce-overhead", "dynamic": False}
    assert compile_options({"backend": "aot_eager", "dynamic": None}) == {"backend": "aot_eager", "dynamic": None}
    assert uses_cuda_graphs(compile_options("reduce-overhead")) and uses_cuda_graphs({"mode": "max-autotune"})
    assert uses_cuda_graphs({"options": {"triton.cudagraphs": True}})
    assert not uses_cuda_graphs(compile_options("max-autotune-no-cudagraphs")) and not uses_cuda_graphs(None)
    for value, match in (("fast", "mode must be one of"), ({"mode": "default", "options": {"a": 1}}, "either a mode"),
                         ({"backend": "inductor", "speed": 2}, r"unknown keys \['speed'\]"), (3, "must be null")):
        with pytest.raises(ConfigError, match=match):
            compile_options(value)
    with pytest.raises(ConfigError, match="mode must be one of"):
        _model(compile="fastest")


def test_deepspeed_refuses_zero3_and_cuda_graphs():
    check_strategy(compile_options("reduce-overhead"), DDPStrategy())
    check_strategy(compile_options(True), DeepSpeedStrategy(stage=2))
    check_strategy(None, DeepSpeedStrategy(stage=3))
    with pytest.raises(ConfigError, match="ZeRO stage 3"):
        check_strategy(compile_options(True), DeepSpeedStrategy(stage=3))
    with pytest.raises(ConfigError, match="CUDA graphs"):
        check_strategy(compile_options("reduce-overhead"), DeepSpeedStrategy(stage=2))
    with pytest.raises(ConfigError, match="ZeRO stage 3"):  # the recipes' crash-safe subclass
        check_strategy(compile_options(True), AtomicDeepSpeedStrategy(stage=3))


def _loader(n_batches: int) -> DataLoader:
    """Batches of 4 labelled clips (labels under "kind", as the model's label_key says)."""
    video, labels = _clips(4 * n_batches)
    return DataLoader([{"video": v, "kind": label} for v, label in zip(video, labels)], batch_size=4)


class _CheckpointedBlock(torch.nn.Module):
    """A projection and a PSA layer under activation checkpointing, as in the backbones."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(64, 64)
        self.psa = PSAAttention(PSAConfig(block_m=64, block_n=32, budget=1.0, backend="triton"))

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        q = self.proj(x)
        return self.psa(q, q, x, grid=(4, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._inner, x, use_reentrant=False)


@pytest.mark.usefixtures("triton_selection")
def test_checkpointed_psa_layers_compile_into_the_graph():
    """The layer's statistics are a side effect of forward; `compile_networks` lets dynamo keep
    them out of the recomputation, so a checkpointed block compiles whole (fullgraph) and its
    gradients and statistics are eager's."""
    torch.manual_seed(0)
    block = _CheckpointedBlock()
    x = torch.randn(1, 2, 256, 64)
    block(x).pow(2).sum().backward()
    expected, density = block.proj.weight.grad.clone(), block.psa.last_density
    block.proj.weight.grad = None
    torch._dynamo.reset()
    compile_networks({"backend": "aot_eager", "fullgraph": True, "dynamic": False}, block)
    block(x).pow(2).sum().backward()
    torch._dynamo.reset()
    torch.testing.assert_close(block.proj.weight.grad, expected, rtol=0, atol=0)
    assert block.psa.last_density == density < 1.0


class _GraphCount(pl.Callback):
    """Dynamo's compiled graphs after each training step."""

    def __init__(self) -> None:
        self.after_step: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after_step.append(counters["stats"]["unique_graphs"])


def _fit_classifier(compile):
    pl.seed_everything(0)
    torch._dynamo.reset()
    counters.clear()
    model = _model(label_key="kind", teacher="copy", kd_weight=0.1, compile=compile)
    graphs = _GraphCount()
    annealing = SparsityAnnealing(start_budget=0.5, end_budget=1.0, start_step=0, end_step=4)  # new every step
    trainer = pl.Trainer(
        max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[annealing, AttentionStats(every_n_steps=2), graphs],
        val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0,
    )
    trainer.fit(model, _loader(5), _loader(2))
    return model, trainer, graphs.after_step


def test_compiled_classifier_trains_as_eager_does():
    """Student and teacher compiled (aot_eager): the same weights after five steps with the budget
    moving every step, the probe run eagerly and a validation in between; no training graph
    compiled after the first step; checkpoints keep the eager model's keys."""
    eager, _, _ = _fit_classifier(None)
    compiled, trainer, graphs = _fit_classifier({"backend": "aot_eager"})
    torch._dynamo.reset()
    assert graphs[0] > 0 and graphs[:3] == graphs[:1] * 3 and graphs[3:] == graphs[3:4] * 2, graphs  # + eval graphs
    assert "psa_stats/probe_relative_error" in trainer.logged_metrics and "val/acc1" in trainer.logged_metrics
    expected, got = eager.state_dict(), compiled.state_dict()
    assert list(got) == list(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    assert compiled.budget == eager.budget == 1.0


_WAN_PSA = {**PSA, "layout": "tile", "tile_size": [1, 4, 4]}


def test_compiled_distillation_trains_as_eager_does():
    """The Wan student and its frozen teacher copy compiled: the same weights after three steps, to
    float rounding (AOTAutograd decomposes some of diffusers' operators; updates are ~3e-3)."""
    states = []
    for compile in (None, {"backend": "aot_eager"}):
        pl.seed_everything(0)
        torch._dynamo.reset()
        torch.manual_seed(0)
        module = DistillationModule(model="tiny", psa=_WAN_PSA, lr=1e-3, compile=compile)
        trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, datamodule=SyntheticLatents(num_samples=6, batch_size=2))
        states.append(module.state_dict())
    torch._dynamo.reset()
    assert list(states[1]) == list(states[0])
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=1e-4, atol=1e-5, msg=name)


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def _eager_and_cuda_graph_runs(make_module, make_data):
    """Six bf16-mixed steps on the GPU, eager and under mode="reduce-overhead", the budget moving
    every step, the probe run eagerly and a validation after step 3: per run the training losses
    and the validation loss, dynamo's graphs after each step, CUDA-graph skips."""
    runs = []
    for compile in (None, "reduce-overhead"):
        pl.seed_everything(0)
        torch._dynamo.reset()
        counters.clear()
        module = make_module(compile)
        losses, graphs = _Losses(), _GraphCount()
        annealing = SparsityAnnealing(start_budget=0.5, end_budget=1.0, start_step=0, end_step=5)
        trainer = pl.Trainer(
            max_steps=6, accelerator="gpu", devices=1, precision="bf16-mixed", logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[annealing, AttentionStats(every_n_steps=2), losses, graphs],
            val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0, limit_val_batches=2,
        )
        trainer.fit(module, **make_data())
        assert module.budget == 1.0 and "psa_stats/probe_relative_error" in trainer.logged_metrics
        runs.append((losses.values + [float(trainer.logged_metrics["val/loss"])], graphs.after_step,
                     counters["inductor"]["cudagraph_skips"]))
    torch._dynamo.reset()
    return runs


def _check_graph_run(runs, rtol: float, atol: float) -> None:
    """No CUDA-graph skip, no training graph after the first step (validation adds its own), and
    the eager run's losses (inductor fuses other kernels: bf16 rounding apart)."""
    (eager_losses, _, _), (losses, graphs, skips) = runs
    assert skips == 0 and graphs[0] > 0 and graphs[:3] == graphs[:1] * 3 and graphs[3:] == graphs[3:4] * 3, graphs
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses), rtol=rtol, atol=atol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_classifier_trains_under_cuda_graphs():
    runs = _eager_and_cuda_graph_runs(
        lambda compile: _model(label_key="kind", teacher="copy", kd_weight=0.1, compile=compile),
        lambda: {"train_dataloaders": _loader(6), "val_dataloaders": _loader(2)})
    _check_graph_run(runs, rtol=2e-2, atol=1e-3)  # losses ~1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_distillation_trains_under_cuda_graphs():
    """The tiny Wan transformer (2 heads of 64, 80 tokens) and its frozen teacher copy."""
    runs = _eager_and_cuda_graph_runs(
        lambda compile: DistillationModule(model="tiny", psa=_WAN_PSA, lr=1e-3, compile=compile),
        lambda: {"datamodule": SyntheticLatents(num_samples=12, batch_size=2)})
    _check_graph_run(runs, rtol=0.1, atol=1e-4)  # student-teacher MSE of 1e-5..1e-2: bf16 rounding is a large part
