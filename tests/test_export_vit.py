"""`psa-train export` / `psa_train.from_pretrained` for `VideoClassifier` runs: the student is
written in transformers' format and reloads with identical weights and logits, PSA on."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from one_thread import one_torch_thread  # noqa: F401  (autouse)
from psa_train.callbacks import SparsityAnnealing
from psa_train.data import collate_videos
from safetensors.torch import load_file
from torch.utils.data import DataLoader

import psa_train
from psa_train.attention import PSAConfig
from psa_train.cli import main as psa_main
from psa_train.models.vit import psa_layers
from psa_train.modules.video_classifier import (
    TINY_VIDEOMAE_CONFIG,
    FrameEncoderClassifier,
    VideoClassifier,
)

PSA = {"block_m": 64, "block_n": 32, "tile_size": [2, 4, 4], "bands": {1: 0.2, 2: 0.1, 4: 0.1, 8: 0.2}}
SMALL = dict(TINY_VIDEOMAE_CONFIG, image_size=32, patch_size=4, num_frames=8, hidden_size=64, intermediate_size=96)
VIT = {"model_type": "vit", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1,
       "intermediate_size": 64, "image_size": 32, "patch_size": 4}


def _samples(n=4, frames=8):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(n, 3, frames, 32, 32, generator=g) * 2 - 1
    return [{"video": v, "caption": "", "key": f"{i}", "meta": {"kind": i % 3}} for i, v in enumerate(video)]


def _run(tmp: Path, backbone, frames=8, annealing=True) -> Path:
    """Two training steps (annealed to budget 0.5 for VideoMAE), then `trainer.save_checkpoint`."""
    pl.seed_everything(0)
    model = VideoClassifier(backbone=backbone, num_classes=3, psa=PSA, label_key="kind", lr=1e-2,
                            warmup_steps=0, lr_schedule="constant")
    callbacks = [SparsityAnnealing(start_budget=0.0, end_budget=1.0, start_step=0, end_step=4)] if annealing else []
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", logger=pl.loggers.CSVLogger(tmp, name="logs", version=""),
        log_every_n_steps=1, enable_checkpointing=False, default_root_dir=tmp, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(model, DataLoader(_samples(frames=frames), batch_size=2, collate_fn=collate_videos))
    ckpt = tmp / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt


def _pixels(frames=8):
    return torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:text.index("\n---", 4)])


def test_videomae_export_reloads_with_identical_weights_and_logits(tmp_path, capsys):
    ckpt = _run(tmp_path / "run", SMALL)
    out = tmp_path / "export"
    assert psa_main(["export", "--ckpt_path", str(ckpt), "--output", str(out)]) == 0
    assert "exported full weights" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "psa_config.json", "psa_train.json", "README.md"} <= {
        p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["architectures"] == ["VideoMAEForVideoClassification"]

    raw = torch.load(ckpt, map_location="cpu", weights_only=False)
    student = {k[len("student.model."):]: v for k, v in raw["state_dict"].items() if k.startswith("student.model.")}
    # transformers writes VideoMAE's query/value biases under their original names (q_bias, v_bias)
    renamed = {".attention.q_bias": ".attention.query.bias", ".attention.v_bias": ".attention.value.bias"}
    exported = {}
    for k, v in load_file(str(out / "model.safetensors")).items():
        for old, new in renamed.items():
            k = k.replace(old, new)
        exported[k] = v
    assert exported.keys() == student.keys()
    assert all(torch.equal(exported[k], student[k]) for k in student)

    budget = raw["psa_train"]["budget"]
    assert 0.0 < budget < 1.0  # annealed part way: the export carries the reached budget
    assert PSAConfig.from_dict(json.loads((out / "psa_config.json").read_text())).budget == pytest.approx(budget)
    info = json.loads((out / "psa_train.json").read_text())
    assert info["library_name"] == "transformers" and info["model_class"] == "VideoMAEForVideoClassification"
    assert info["global_step"] == 2 and info["base_model"]["named_config"] == "config-dict"

    model = psa_train.from_pretrained(out)
    assert type(model).__name__ == "VideoMAEForVideoClassification" and not model.training
    reloaded = model.state_dict()
    assert reloaded.keys() == student.keys() and all(torch.equal(reloaded[k], student[k]) for k in student)
    layers = psa_layers(model)
    assert len(layers) == 2 and all(layer.config.budget == pytest.approx(budget) for layer in layers)
    trained = VideoClassifier.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False).eval()
    assert trained.budget == pytest.approx(budget)
    pixels = _pixels()
    with torch.no_grad():
        logits = model(pixel_values=pixels).logits
        assert torch.equal(logits, trained.student(pixels))
        dense = psa_train.from_pretrained(out, psa=False)
        assert not psa_layers(dense)
        assert not torch.allclose(logits, dense(pixel_values=pixels).logits)  # PSA is really on when reloaded

    meta = _front_matter(out / "README.md")
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "video-classification"
    assert "base_model" not in meta  # a config-dict backbone: no Hub id
    assert {"psa-train", "video-classification"} <= set(meta["tags"]) and "video-generation" not in meta["tags"]
    card = (out / "README.md").read_text()
    assert "`VideoMAEForVideoClassification` video classifier" in card and "Wan" not in card
    assert f'psa_train.from_pretrained("{out}")' in card and "AutoModelForVideoClassification" in card
    assert "`train/loss`" in card  # from the CSV log found above checkpoints/


def test_model_card_base_model_from_a_hub_backbone():
    from psa_train.export.model_card import card_metadata, render_model_card
    from psa_train.export.vit import base_model_reference

    info = {"library_name": "transformers", "model_class": "VideoMAEForVideoClassification", "weights": "full",
            "num_classes": 400, "trainable": "full",
            "base_model": base_model_reference({"backbone": "MCG-NJU/videomae-base-finetuned-kinetics"})}
    meta = card_metadata(info, None)
    assert meta["base_model"] == "MCG-NJU/videomae-base-finetuned-kinetics"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "video-classification"
    card = render_model_card(info, PSAConfig().to_dict(), where="me/videomae-psa", on_hub=True)
    assert 'AutoModelForVideoClassification.from_pretrained("me/videomae-psa")' in card and "hf_hub_download" in card


def test_frame_encoder_export_keeps_encoder_and_head(tmp_path):
    ckpt = _run(tmp_path / "run", VIT, frames=2, annealing=False)
    out = tmp_path / "export"
    assert psa_main(["export", "--ckpt_path", str(ckpt), "--output", str(out)]) == 0
    head = json.loads((out / "head.json").read_text())
    assert head["class"] == "FrameEncoderClassifier" and head["num_classes"] == 3 and head["hidden_size"] == 64
    assert (out / "encoder" / "config.json").is_file() and (out / "encoder" / "model.safetensors").is_file()
    assert json.loads((out / "psa_train.json").read_text())["model_class"] == "FrameEncoderClassifier"

    model = psa_train.from_pretrained(out)
    assert isinstance(model, FrameEncoderClassifier) and len(psa_layers(model)) == 1
    trained = VideoClassifier.load_from_checkpoint(str(ckpt), map_location="cpu", weights_only=False).eval()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.student.state_dict().values()))
    assert model.state_dict().keys() == trained.student.state_dict().keys()
    pixels = _pixels(frames=2)
    with torch.no_grad():
        assert torch.equal(model(pixels), trained.student(pixels))
    assert _front_matter(out / "README.md")["library_name"] == "transformers"


def test_lora_only_is_refused_for_a_video_classifier(tmp_path, capsys):
    from psa_train.export.run import _is_video_classifier

    assert _is_video_classifier({"model": {"class_path": "psa_train.modules.video_classifier.VideoClassifier"}}, {})
    assert _is_video_classifier({}, {"backbone": "tiny", "num_classes": 6})
    assert not _is_video_classifier({}, {"model": "tiny", "trainable": "full"})
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "tiny", "num_classes": 6}}, ckpt)
    assert psa_main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "o"), "--lora-only"]) == 2
    assert "--lora-only needs a LoRA run" in capsys.readouterr().err
    assert psa_main(["export", "--ckpt_path", str(ckpt), "--output", str(tmp_path / "o")]) == 2
    assert "no student weights" in capsys.readouterr().err
