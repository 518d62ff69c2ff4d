"""SampleVideos on the tiny Wan model: clips written and readable, metrics logged, level map drawn."""

import lightning.pytorch as pl
import pytest
import torch

from psa_train.callbacks import SampleVideos
from psa_train.modules import DistillationModule

PSA = {"block_m": 64, "block_n": 32, "band_mode": "quota", "bands": {1: 0.34, 2: 0.0, 4: 0.0, 8: 0.34},
       "layout": "tile", "tile_size": [1, 4, 4]}


def _validation_loader():
    gen = torch.Generator().manual_seed(0)
    sample = {"latents": torch.randn(16, 5, 8, 8, generator=gen), "text_embeds": torch.randn(32, 32, generator=gen),
              "text_mask": torch.ones(32, dtype=torch.long)}
    return torch.utils.data.DataLoader([sample], batch_size=1)


def test_sample_videos_writes_side_by_side_mp4_metrics_and_level_map(tmp_path):
    decord = pytest.importorskip("decord")
    module = DistillationModule(model="tiny", psa=PSA)
    callback = SampleVideos(prompts=["a red square moves right"], seeds=[0], encoders="tiny",
                            num_inference_steps=2, fps=8)
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=pl.loggers.TensorBoardLogger(tmp_path, name="tb"),
                         callbacks=[callback], accelerator="cpu", enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.validate(module, dataloaders=_validation_loader())

    videos = [p for p in callback.last_written if p.suffix == ".mp4"]
    assert len(videos) == 1
    reader = decord.VideoReader(str(videos[0]))
    assert len(reader) == 17  # 5 latent frames -> 17 video frames
    frame = reader[0].asnumpy()
    assert frame.shape == (64, 128, 3)  # teacher | student side by side
    level_maps = [p for p in callback.last_written if p.suffix == ".png"]
    assert len(level_maps) == 1 and level_maps[0].stat().st_size > 0

    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["samples/psnr"]) and metrics["samples/psnr"] > 0
    assert -1.0 <= metrics["samples/ssim"] <= 1.0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((tmp_path / "tb").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    clip = events.Images("samples/prompt0_seed0")[0]
    assert clip.encoded_image_string[:6] == b"GIF89a" and (clip.width, clip.height) == (128, 64)


def test_student_equal_to_teacher_gives_perfect_ssim(tmp_path):
    module = DistillationModule(model="tiny", psa=PSA)
    for layer in module.psa_layers():
        layer.force_level = 1  # the student computes exactly the teacher's attention
    callback = SampleVideos(prompts=["a blue star spins"], seeds=[1], encoders="tiny", num_inference_steps=2)
    trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[callback], accelerator="cpu",
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, dataloaders=_validation_loader())
    assert trainer.callback_metrics["samples/ssim"].item() == pytest.approx(1.0, abs=1e-4)


def test_invalid_clip_size_is_refused():
    with pytest.raises(ValueError, match="4k\\+1"):
        SampleVideos(num_frames=16)
