"""AttentionStats and its torchmetrics metrics."""

import lightning.pytorch as pl
import pytest
import torch

from psa_train.attention import PSAAttention, PSAConfig
from psa_train.attention.levels import level_counts
from psa_train.callbacks import AttentionStats, LevelShareMetric, RelativeErrorMetric


def test_level_share_metric_matches_hand_computation():
    metric = LevelShareMetric()
    metric.update(level_counts(torch.tensor([[[[1, 2, 0, 8]]]])))
    metric.update(level_counts(torch.tensor([[[[1, 1, 4, 0]]]])))
    result = metric.compute()
    # 8 blocks: three at 1, one each at 2, 4, 8, two skipped.
    assert result["level_1_share"].item() == pytest.approx(3 / 8)
    assert result["level_0_share"].item() == pytest.approx(2 / 8)
    assert result["density"].item() == pytest.approx((3 + 1 / 2 + 1 / 4 + 1 / 8) / 8)


def test_relative_error_metric_matches_hand_computation():
    metric = RelativeErrorMetric()
    metric.update(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]))
    metric.update(torch.tensor([0.0]), torch.tensor([2.0]))
    # errors: 0, 1, -2 -> 5; exact norm^2: 1 + 1 + 4 = 6
    assert metric.compute().item() == pytest.approx((5 / 6) ** 0.5)


class _ProbedModule(pl.LightningModule):
    def __init__(self, force_level=None):
        super().__init__()
        self.proj = torch.nn.Linear(16, 3 * 16)
        config = PSAConfig(block_m=64, block_n=32, band_mode="quota", bands={1: 0.25, 2: 0.25, 4: 0.0, 8: 0.25})
        self.attn = PSAAttention(config)
        self.attn.force_level = force_level

    def probe_student(self, batch):
        q, k, v = self.proj(batch).unflatten(-1, (3, 1, 16)).permute(2, 0, 3, 1, 4)
        return self.attn(q, k, v)

    def training_step(self, batch, batch_idx):
        return self.probe_student(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(module, tmp_path, every_n_steps=2, steps=4):
    logger = pl.loggers.CSVLogger(tmp_path)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_steps=steps, logger=logger, log_every_n_steps=1,
        callbacks=[AttentionStats(every_n_steps=every_n_steps)], enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, accelerator="cpu",
    )
    data = torch.randn(8, 256, 16, generator=torch.Generator().manual_seed(0))
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=1))
    return trainer.callback_metrics


def test_stats_log_density_shares_and_probe_error(tmp_path):
    metrics = _fit(_ProbedModule(), tmp_path)
    # quota bands: per row of 8 key blocks 2 at level 1, 2 at level 2, 2 at level 8, 2 skipped.
    assert metrics["psa_stats/level_1_share"].item() == pytest.approx(0.25)
    assert metrics["psa_stats/level_8_share"].item() == pytest.approx(0.25)
    assert metrics["psa_stats/density"].item() == pytest.approx(0.25 * (1 + 1 / 2 + 1 / 8))
    assert metrics["psa_stats/layer_00/density"].item() == pytest.approx(metrics["psa_stats/density"].item())
    assert 0.0 < metrics["psa_stats/probe_relative_error"].item() < 1.5


def test_stats_are_logged_only_at_their_steps(tmp_path):
    from distill_helpers import logged

    _fit(_ProbedModule(), tmp_path, every_n_steps=2, steps=7)
    loss_steps = sorted(logged(tmp_path, "train_loss", root=True)) or list(range(7))
    density = logged(tmp_path, "psa_stats/density", root=True)
    # every second optimizer step, at the step index the same batch's loss is logged under
    assert sorted(density) == [1, 3, 5] and set(density) <= set(loss_steps)


def test_probe_error_is_zero_when_every_block_is_full(tmp_path):
    metrics = _fit(_ProbedModule(force_level=1), tmp_path)
    assert metrics["psa_stats/density"].item() == pytest.approx(1.0)
    assert metrics["psa_stats/probe_relative_error"].item() < 1e-6
