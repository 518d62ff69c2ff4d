"""DistillationModule: teacher/student wiring (full and LoRA), losses, schedules, logging, hparams."""

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from synthetic_latents import SyntheticLatents

from psa_train.attention import PSAConfig
from psa_train.models.wan import load_wan_transformer, psa_layers
from psa_train.modules import ConfigError, DistillationModule
from psa_train.modules import schedules

PSA = {"block_m": 64, "block_n": 32, "layout": "tile", "tile_size": [1, 4, 4]}


def _batch(b=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 32, dtype=torch.long)
    mask[:, 20:] = 0
    return {
        "latents": torch.randn(b, 16, 5, 8, 8, generator=g),
        "text_embeds": torch.randn(b, 32, 32, generator=g),
        "text_mask": mask,
    }


def _module(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("psa", PSA)
    return DistillationModule(model="tiny", **kwargs)


def test_full_mode_teacher_is_a_frozen_dense_copy():
    module = _module(trainable="full")
    assert module.teacher is not None
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert all(p.requires_grad for p in module.student.parameters())
    assert len(psa_layers(module.student)) == 2 and not psa_layers(module.teacher)
    torch.manual_seed(0)
    dense = load_wan_transformer("tiny")
    batch = _batch()
    x, t, text = batch["latents"], torch.tensor([500.0, 20.0]), batch["text_embeds"]
    torch.testing.assert_close(module.teacher_forward(x, t, text), dense(x, t, text).sample.detach(), rtol=0, atol=0)
    module.train()
    assert not module.teacher.training  # the teacher stays in eval mode


def test_lora_mode_keeps_one_copy_and_the_teacher_is_the_base_model_dense():
    module = _module(trainable="lora", lora_rank=4, lora_alpha=8, lora_target_modules=["to_q", "to_v"])
    assert module.teacher is None
    trainable = {n for n, p in module.student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("attn1.to_q.lora_A" in n for n in trainable) and not any("to_k" in n for n in trainable)
    torch.manual_seed(0)
    dense = load_wan_transformer("tiny")
    # make the adapters non-trivial, so "adapters off" is a real check
    with torch.no_grad():
        for n, p in module.student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    batch = _batch()
    x, t, text = batch["latents"], torch.tensor([500.0, 20.0]), batch["text_embeds"]
    teacher = module.teacher_forward(x, t, text)
    torch.testing.assert_close(teacher, dense(x, t, text).sample.detach(), rtol=1e-6, atol=1e-6)
    for layer in psa_layers(module.student):  # dense levels: only the adapters differ now
        layer.force_level = 1
    student = module.student_forward(x, t, text)
    assert (student - teacher).abs().max() > 1e-3  # adapters and PSA are back on after the teacher ran


def test_losses_are_mse_to_teacher_and_to_the_true_velocity():
    module = _module(distill_weight=0.7, flow_matching_weight=0.3, cfg_dropout=0.0)
    batch = _batch()
    losses = module.compute_losses(batch, "fit")
    latents, noise, noisy, timesteps, text = module._inputs(batch, "fit")  # same draws (same step)
    student = module.student_forward(noisy, timesteps, text)
    teacher = module.teacher_forward(noisy, timesteps, text)
    expect_d = F.mse_loss(student, teacher)
    expect_f = F.mse_loss(student, noise - latents)
    torch.testing.assert_close(losses["distill_loss"], expect_d)
    torch.testing.assert_close(losses["flow_matching_loss"], expect_f)
    torch.testing.assert_close(losses["loss"], 0.7 * expect_d + 0.3 * expect_f)
    # inputs: masked text, noisy = (1 - s) x0 + s noise with s = t / 1000
    assert (text[:, 20:] == 0).all() and (text[:, :20] != 0).all()
    s = (timesteps / 1000).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(noisy, (1 - s) * latents + s * noise)


def test_forced_dense_student_matches_teacher_exactly_at_init():
    module = _module(trainable="full")
    for layer in psa_layers(module.student):
        layer.force_level = 1
    losses = module.compute_losses(_batch(), "fit")
    assert losses["distill_loss"] < 1e-10


def test_cfg_dropout_zeroes_the_text_of_dropped_samples():
    module = _module(cfg_dropout=1.0)
    *_, text = module._inputs(_batch(), "fit")
    assert (text == 0).all()
    module = _module(cfg_dropout=0.0)
    *_, text = module._inputs(_batch(), "fit")
    assert (text[:, :20] != 0).all()


def test_step_draws_are_a_function_of_step_rank_and_stage():
    from types import SimpleNamespace

    module = _module()
    noise = lambda stage="fit": module._inputs(_batch(), stage)[1]  # noqa: E731
    first = noise()
    torch.testing.assert_close(noise(), first, rtol=0, atol=0)  # same step -> same draws
    assert not torch.equal(noise("validate"), first)
    module._trainer = SimpleNamespace(global_step=5, global_rank=0)
    at_5 = noise()
    assert not torch.equal(at_5, first)
    module._trainer = SimpleNamespace(global_step=5, global_rank=1)
    assert not torch.equal(noise(), at_5)
    module._trainer = None


def test_shifted_sigmas_match_diffusers_flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for shift in (1.0, 3.0, 5.0):
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
        u = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000  # its unshifted sigmas
        torch.testing.assert_close(schedules.shift_sigmas(u, shift).float(), sched.sigmas.float(), rtol=1e-5, atol=1e-6)
    s = schedules.sample_sigmas(10_000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert s.min() >= 0 and s.max() <= 1 and s.mean() > 0.6  # the shift moves mass to the noisy end


def test_lr_schedule_warmup_constant_and_cosine():
    f = schedules.lr_lambda(4, None, "constant")
    assert [f(i) for i in range(6)] == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    g = schedules.lr_lambda(2, 12, "cosine", min_lr_ratio=0.1)
    assert g(2) == pytest.approx(1.0) and g(12) == pytest.approx(0.1)
    assert g(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    with pytest.raises(ValueError, match="max_steps"):
        schedules.lr_lambda(0, None, "cosine")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"psa": {"bnad_mode": "quota"}}, "bnad_mode"),
        ({"psa": {"block_m": 48}}, "block_m"),
        ({"psa_preset": "nope"}, "psa_preset"),
        ({"trainable": "half"}, "trainable"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"distill_weight": 0.0}, "distill_weight"),
    ],
)
def test_bad_values_raise_config_errors_naming_them(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _module(**kwargs)


def test_presets_and_overrides():
    module = _module(psa_preset="wan21_1_3b", psa={"budget": 0.5})
    cfg = module.psa_config
    assert cfg.band_mode == "threshold" and cfg.layout == "gilbert" and cfg.budget == 0.5
    assert all(layer.config == cfg for layer in psa_layers(module.student))


def test_training_logs_every_step_and_checkpoint_carries_psa_state(tmp_path):
    module = _module(psa={**PSA, "budget": 0.8}, lr=1e-4, warmup_steps=2)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_steps=3, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp_path),
        log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        enable_checkpointing=False, gradient_clip_val=1.0,
    )
    trainer.fit(module, datamodule=SyntheticLatents(num_samples=8, batch_size=2))
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "lightning_logs/version_0/metrics.csv")) if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for key in ("train/distill_loss", "train/lr", "train/budget", "train/density"):
        assert all(r[key] for r in rows), key
    assert [float(r["train/lr"]) for r in rows] == pytest.approx([1e-4 / 3, 2e-4 / 3, 1e-4])
    assert float(rows[0]["train/budget"]) == pytest.approx(0.8)
    assert 0 < float(rows[0]["train/density"]) <= 1
    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["psa_train"]["psa_config"]["budget"] == 0.8 and ckpt["psa_train"]["budget"] == pytest.approx(0.8)
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])  # rebuilt, not stored
    assert ckpt["psa_train"]["psa_config"] == PSAConfig.from_dict({**PSA, "budget": 0.8}).to_dict()
    assert ckpt["hyper_parameters"]["psa"] == {**PSA, "budget": 0.8}
    again = DistillationModule.load_from_checkpoint(path, weights_only=True)
    for (name, a), b in zip(module.student.state_dict().items(), again.student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
