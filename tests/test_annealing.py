"""SparsityAnnealing: schedule values, resume, and the dense path at budget 0."""

import math

import lightning.pytorch as pl
import pytest
import torch

from psa_train.attention import PSAAttention, PSAConfig
from psa_train.callbacks import SparsityAnnealing
from psa_train.callbacks.annealing import budget_at


@pytest.mark.parametrize(
    "schedule,step,expected",
    [
        ("linear", 0, 0.0),
        ("linear", 10, 0.0),  # still in warm-up
        ("linear", 20, 0.2),  # start_step: the start budget
        ("linear", 60, 0.2 + 0.6 * 0.5),
        ("linear", 100, 0.8),
        ("linear", 500, 0.8),
        ("cosine", 30, 0.2 + 0.6 * 0.5 * (1 - math.cos(math.pi * 10 / 80))),
        ("cosine", 60, 0.5),
        ("step", 39, 0.2),  # progress 0.2375 -> first stage still
        ("step", 40, 0.2 + 0.6 * 0.25),
        ("step", 99, 0.2 + 0.6 * 0.75),
    ],
)
def test_schedule_values(schedule, step, expected):
    value = budget_at(
        step, start_budget=0.2, end_budget=0.8, start_step=20, end_step=100,
        schedule=schedule, warmup_steps=15, num_stages=4,
    )
    assert value == pytest.approx(expected, abs=1e-12)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="end_step"):
        SparsityAnnealing(start_step=10, end_step=5)
    with pytest.raises(ValueError, match="schedule"):
        SparsityAnnealing(schedule="exponential")
    with pytest.raises(ValueError, match="end_budget"):
        SparsityAnnealing(end_budget=1.5)


class _TinyAttentionModule(pl.LightningModule):
    """One PSA layer over a learnable projection: enough to drive the callback."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 3 * 16)
        self.attn = PSAAttention(PSAConfig(
            block_m=64, block_n=32, band_mode="quota", bands={1: 0.25, 2: 0.25, 4: 0.0, 8: 0.25}, budget=1.0
        ))
        self.budgets_seen = []
        self.dense_calls = 0

    def training_step(self, batch, batch_idx):
        self.budgets_seen.append(self.attn.budget)
        q, k, v = self.proj(batch).unflatten(-1, (3, 1, 16)).permute(2, 0, 3, 1, 4)
        out = self.attn(q, k, v)
        return out.pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader():
    data = torch.randn(8, 256, 16, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(data, batch_size=1)


def _trainer(tmp_path, callback, max_steps, **kwargs):
    return pl.Trainer(
        default_root_dir=tmp_path, max_steps=max_steps, callbacks=[callback], logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kwargs,
    )


def test_budget_follows_schedule_and_zero_takes_the_dense_path(tmp_path, monkeypatch):
    import psa_train.attention.layer as layer_module

    sparse_calls = []
    real = layer_module.pyramid_attention
    monkeypatch.setattr(layer_module, "pyramid_attention", lambda *a, **k: sparse_calls.append(1) or real(*a, **k))
    callback = SparsityAnnealing(start_budget=0.0, end_budget=1.0, start_step=2, end_step=6, warmup_steps=2)
    module = _TinyAttentionModule()
    _trainer(tmp_path, callback, max_steps=8, enable_checkpointing=False).fit(module, _loader())
    expected = [callback.budget_at(step) for step in range(8)]
    assert module.budgets_seen == pytest.approx(expected)
    assert expected[:3] == [0.0, 0.0, 0.0] and expected[-1] == 1.0
    # Steps 0-2 ran at budget 0: no sparse kernel call; steps 3-7 called it once each.
    assert len(sparse_calls) == 5
    assert 0.0 < module.attn.last_density < 1.0


def test_resume_restores_the_schedule_position(tmp_path):
    callback = SparsityAnnealing(start_budget=0.0, end_budget=1.0, start_step=0, end_step=8)
    first = _TinyAttentionModule()
    _trainer(tmp_path, callback, max_steps=4).fit(first, _loader())
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    state = torch.load(checkpoint, weights_only=False)["callbacks"]
    saved = next(value for key, value in state.items() if "SparsityAnnealing" in key)
    assert saved == {"budget": pytest.approx(3 / 8), "step": 3}

    resumed_callback = SparsityAnnealing(start_budget=0.0, end_budget=1.0, start_step=0, end_step=8)
    resumed = _TinyAttentionModule()
    _trainer(tmp_path, resumed_callback, max_steps=8).fit(resumed, _loader(), ckpt_path=str(checkpoint))
    assert resumed.budgets_seen == pytest.approx([4 / 8, 5 / 8, 6 / 8, 7 / 8])


def test_changed_schedule_on_resume_warns(tmp_path):
    callback = SparsityAnnealing(start_budget=0.0, end_budget=1.0, start_step=0, end_step=8)
    _trainer(tmp_path, callback, max_steps=2).fit(_TinyAttentionModule(), _loader())
    checkpoint = next((tmp_path / "checkpoints").glob("*.ckpt"))
    other = SparsityAnnealing(start_budget=0.5, end_budget=1.0, start_step=0, end_step=8)
    with pytest.warns(UserWarning, match="schedule gives"):
        _trainer(tmp_path, other, max_steps=3).fit(_TinyAttentionModule(), _loader(), ckpt_path=str(checkpoint))
