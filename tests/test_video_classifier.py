"""VideoClassifier: losses, teachers, labels from the video shards, and a short Lightning fit."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from classifier_helpers import PSA, SMALL, _clips, _model
from one_thread import one_torch_thread  # noqa: F401  (autouse)
from psa_train.callbacks import AttentionStats, SparsityAnnealing
from psa_train.data import VideoShardDataModule, collate_videos
from psa_train.data.demo import encode_mp4
from psa_train.data.tario import write_tar
from torch.utils.data import DataLoader
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

from psa_train.attention import PSAAttention
from psa_train.models import vit as vit_psa
from psa_train.modules.distill import ConfigError
from psa_train.modules.video_classifier import VideoClassifier, build_video_classifier


def _batches(n_batches=4, batch=4, classes=3):
    video, labels = _clips(n_batches * batch, classes)
    samples = [{"video": v, "caption": "", "key": f"{i:03d}", "meta": {"kind": int(l)}} for i, (v, l) in
               enumerate(zip(video, labels))]
    return samples


def test_labels_from_batch_or_json_and_the_loss_terms():
    video, labels = _clips(4)
    model = _model(teacher="copy", kd_weight=0.5, kd_temperature=2.0, label_key="kind")
    metas = [{"kind": int(l)} for l in labels]
    assert torch.equal(model.labels({"video": video, "meta": metas}), labels)
    assert torch.equal(model.labels({"video": video, "kind": labels + 1}), labels + 1)
    assert model.labels({"video": video}) is None

    model.train()
    losses, logits, teacher = model.compute_losses({"video": video}, labels)
    assert logits.shape == (4, 3) and teacher.shape == (4, 3)
    t = 2.0
    p_t = torch.softmax(teacher / t, -1)
    kd = (p_t * (torch.log(p_t) - torch.log_softmax(logits / t, -1))).sum(-1).mean() * t * t
    torch.testing.assert_close(losses["kd"], kd)
    torch.testing.assert_close(losses["ce"], torch.nn.functional.cross_entropy(logits, labels))
    torch.testing.assert_close(losses["loss"], losses["ce"] + 0.5 * losses["kd"])
    losses["loss"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert model.student.model.classifier.weight.grad.abs().sum() > 0


def test_teacher_copy_is_dense_and_frozen_shared_teacher_is_student_without_psa():
    video, _ = _clips(2)
    copy_model = _model(teacher="copy")
    shared = _model(teacher="shared")
    # same seed -> same initial weights: both teachers are the dense initial model
    with torch.no_grad():
        a, b = copy_model.teacher_logits({"video": video}), shared.teacher_logits({"video": video})
        sparse = shared.student_logits({"video": video})
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, sparse, atol=1e-5)  # the student is sparse at budget 1
    assert not any(isinstance(m, PSAAttention) for m in copy_model.teacher.modules())
    assert all(not p.requires_grad for p in copy_model.teacher.parameters())
    with torch.no_grad():
        for layer in shared.psa_layers():
            layer.force_level = 1
        torch.testing.assert_close(shared.student_logits({"video": video}), b, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    video, labels = _clips(2)
    grads = []
    for ckpt in (False, True):
        model = _model(gradient_checkpointing=ckpt).train()
        assert any(getattr(m, "gradient_checkpointing", False) is True for m in model.student.modules()) == ckpt
        model.compute_losses({"video": video}, labels)[0]["loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.student.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_config_errors():
    with pytest.raises(ConfigError, match="needs a teacher"):
        _model(kd_weight=1.0)
    with pytest.raises(ConfigError, match="teacher must be one of"):
        _model(teacher="frozen")
    with pytest.raises(ConfigError, match="unknown videomae config keys"):
        _model(backbone={"hidden_sise": 64})
    with pytest.raises(ConfigError, match="unknown PSAConfig keys"):
        _model(psa={"blocks": 2})


def test_image_backbone_per_frame():
    from psa_train.models.vit import enable_psa_vit, psa_layers

    net = build_video_classifier(
        {"model_type": "vit", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1,
         "intermediate_size": 64, "image_size": 32, "patch_size": 4}, num_classes=4)
    processors = enable_psa_vit(net, PSA)
    assert processors[0].config.prefix_tokens == 1
    logits = net(torch.randn(2, 3, 3, 32, 32))  # [B, T, C, H, W]
    assert logits.shape == (2, 4) and psa_layers(net)[0].last_density is not None
    # 6 frames as the batch, each 65 tokens (class token + 8x8): 2 query x 3 key blocks
    assert int(psa_layers(net)[0].last_level_counts.sum()) == 6 * 2 * 3


def test_video_shards_yield_labels_from_json_or_cls(tmp_path):
    frames = (np.random.default_rng(0).random((8, 32, 32, 3)) * 255).astype(np.uint8)
    mp4 = encode_mp4(frames)
    samples = [
        {"__key__": "a", "mp4": mp4, "json": json.dumps({"shape": 2}), "cls": b"7"},
        {"__key__": "b", "mp4": mp4, "json": json.dumps({"shape": 4})},
        {"__key__": "c", "mp4": mp4, "json": json.dumps({"shape": "star"})},  # not an int: skipped
        {"__key__": "d", "mp4": mp4, "txt": "no json"},  # no label: skipped
    ]
    shard = str(tmp_path / "s-000000.tar")
    write_tar(shard, samples)
    dm = VideoShardDataModule(train_shards=shard, val_shards=shard, num_frames=4, height=16, width=16,
                              batch_size=4, num_workers=0, label_key="shape")
    (batch,) = list(dm.val_dataloader())
    assert batch["key"] == ["a", "b"] and batch["label"].tolist() == [2, 4] and dm.skipped == 2
    dm = VideoShardDataModule(train_shards=shard, val_shards=shard, num_frames=4, height=16, width=16,
                              batch_size=4, num_workers=0, label_key="cls")
    (batch,) = list(dm.val_dataloader())
    assert batch["key"] == ["a"] and batch["label"].tolist() == [7]
    plain = VideoShardDataModule(train_shards=shard, val_shards=shard, num_frames=4, height=16, width=16,
                                 batch_size=4, num_workers=0)
    (batch,) = list(plain.val_dataloader())
    assert "label" not in batch and len(batch["key"]) == 4


def test_short_fit_with_annealing_stats_and_accuracy(tmp_path):
    pl.seed_everything(0)
    samples = _batches()
    train = DataLoader(samples, batch_size=4, shuffle=True, collate_fn=collate_videos)
    val = DataLoader(samples, batch_size=8, collate_fn=collate_videos)
    model = _model(label_key="kind", teacher="copy", kd_weight=0.1, kd_temperature=2.0,
                   warmup_steps=2, lr_schedule="cosine")
    annealing = SparsityAnnealing(start_budget=0.0, end_budget=1.0, start_step=0, end_step=6)
    trainer = pl.Trainer(
        max_steps=8, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path), log_every_n_steps=1,
        val_check_interval=4, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        enable_checkpointing=True, default_root_dir=tmp_path, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[annealing, AttentionStats(every_n_steps=2)],
    )
    trainer.fit(model, train, val)
    assert annealing.current_budget == 1.0 and model.budget == 1.0
    m = trainer.logged_metrics
    for key in ("train/loss", "train/ce", "train/kd", "train/lr", "train/budget", "train/density", "train/acc1",
                "val/acc1", "val/acc3", "val/teacher_acc1", "val/agreement", "val/density",
                "psa/budget", "psa/density", "psa_stats/density", "psa_stats/probe_relative_error"):
        assert key in m, key
    assert 0.0 <= float(m["val/acc1"]) <= 1.0 and float(m["val/acc3"]) == 1.0
    assert float(m["val/density"]) < 0.9 and math.isfinite(float(m["train/loss"]))
    hparams = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert hparams["num_classes"] == 3

    # a checkpoint restores the budget and the weights; the random-init teacher is kept in it
    ckpt = trainer.checkpoint_callback.best_model_path or trainer.checkpoint_callback.last_model_path
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["psa_train"]["budget"] == 1.0 and any(k.startswith("teacher.") for k in state["state_dict"])
    again = VideoClassifier.load_from_checkpoint(ckpt)
    assert again.budget == 1.0
    video = torch.stack([s["video"] for s in samples[:2]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.eval().student_logits({"video": video}),
                                   model.student_logits({"video": video}), rtol=1e-5, atol=1e-5)
    result = trainer.test(model, val, verbose=False)[0]
    assert "test/acc1" in result and "test/acc3" in result


def test_tiny_recipe_runs_through_the_cli(tmp_path, monkeypatch):
    """`psa-train fit --config recipes/tiny_vit.yaml` on a few rendered demo clips (labels: shape)."""
    from pathlib import Path

    from psa_train.data.demo import render_clip

    from psa_train import cli

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "tiny_vit.yaml"
    samples = []
    for i in range(8):
        frames, meta = render_clip(i, seed=0)
        samples.append({"__key__": f"{i:06d}", "mp4": encode_mp4(frames), "json": json.dumps(meta)})
    shard = str(tmp_path / "clips-000000.tar")
    write_tar(shard, samples)
    monkeypatch.chdir(tmp_path)
    cli.main([
        "fit", "--config", str(recipe),
        "--data.init_args.train_shards", shard, "--data.init_args.val_shards", shard,
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
    ])
    run = tmp_path / "runs" / "tiny_vit"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "logs").glob("events.out.tfevents.*"))
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["psa_train"]["budget"] == 0.0  # the recipe anneals from step 150; 4 steps stay dense
    assert state["hyper_parameters"]["label_key"] == "shape"


def test_videomae_position_table_moves_with_the_model():
    """VideoMAE keeps its sinusoid table as a plain CPU tensor that every forward copies to the
    device (a host sync per step on a GPU); the classifier registers it as a non-persistent buffer:
    the same logits, the same state dict, and `.to()` moves it."""
    model = _model()
    embeddings = model.student.model.videomae.embeddings
    assert "position_embeddings" in embeddings._buffers
    assert not any(k.endswith("position_embeddings") for k in model.student.state_dict())
    model.student.to(torch.float64)
    assert embeddings.position_embeddings.dtype == torch.float64
    model.student.to(torch.float32)
    plain = VideoMAEForVideoClassification(VideoMAEConfig(**SMALL, num_labels=3))
    plain.load_state_dict(model.student.model.state_dict())
    assert type(plain.videomae.embeddings.position_embeddings) is torch.Tensor
    video = torch.rand(2, 8, 3, 32, 32)
    with vit_psa.psa_disabled(model.student):  # the plain model attends densely
        torch.testing.assert_close(model.student.eval()(video), plain.eval()(pixel_values=video).logits)
