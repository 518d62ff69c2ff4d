"""Latent precompute end to end: real mp4 shards in, latent shards + manifest out."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from one_thread import one_torch_thread  # noqa: F401  (autouse)
from psa_train.data import LatentShardDataModule, decode_video
from psa_train.data.cli import main
from psa_train.data.demo import encode_mp4
from psa_train.data.tario import write_tar

from psa_train import cli as top_cli
from psa_train.models import text_video_encoders as tve
from psa_train.models import tiny_configs


@pytest.fixture(scope="module")
def tiny():
    return tve.load_encoders("tiny")


def moving_square(seed: int, frames: int = 20, size=(45, 70)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    video = np.broadcast_to(rng.integers(0, 255, 3, dtype=np.uint8), (frames, *size, 3)).copy()
    for t in range(frames):
        y, x = 5 + t, 3 + 2 * t
        video[t, y : y + 12, x : x + 12] = rng.integers(0, 255, 3)
    return video


CAPTIONS = ["A red square moves right.", "A   blue star\nspins", "Ünïcödé caption", "", "small"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    first = [{"__key__": f"a{i}", "mp4": encode_mp4(moving_square(i)), "txt": c} for i, c in enumerate(CAPTIONS)]
    first.insert(1, {"__key__": "broken", "mp4": b"nope" * 50, "txt": "x"})
    write_tar(root / "part-000000.tar", first)
    second = [{"__key__": f"b{i}", "mp4": encode_mp4(moving_square(10 + i)), "json": json.dumps({"caption": "b"})}
              for i in range(2)]  # fmt: skip
    write_tar(root / "part-000001.tar", second)
    return str(root / "part-000000.tar"), str(root / "part-000001.tar")


def run(*args: str) -> int:
    return main(["precompute", "--model-id", "tiny", "--batch-size", "2", "--num-workers", "0", "--no-progress", *args])


def test_precompute_equals_direct_encoding(tmp_path, shards, tiny):
    out = tmp_path / "latents"
    assert run("--input", shards[0], "--output", str(out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"]["part-000000.tar"]["samples"] == 5
    assert manifest["shards"]["part-000000.tar"]["skipped"] == 1
    s = manifest["settings"]
    assert (s["model_id"], s["num_frames"], s["height"], s["width"], s["text_max_length"]) == ("tiny", 17, 64, 64, 32)
    assert s["encoder_fingerprint"] == tiny.fingerprint()
    assert manifest["latent_shape"] == list(tiny_configs.LATENT_SHAPE)

    dm = LatentShardDataModule(val_shards=str(out / "part-000000.tar"), batch_size=8, num_workers=0, model_id="tiny")
    dm.setup("validate")
    (batch,) = list(dm.val_dataloader())
    assert sorted(batch["key"]) == [f"a{i}" for i in range(5)]
    for j, key in enumerate(batch["key"]):
        i = int(key[1:])
        clip = decode_video(encode_mp4(moving_square(i)), 17, 64, 64)
        latents = tve.encode_video(tiny.vae, clip[None])[0]
        embeds, mask = tve.encode_text(tiny.tokenizer, tiny.text_encoder, [CAPTIONS[i]], 32)
        assert torch.allclose(batch["latents"][j], latents, atol=1e-5, rtol=1e-4)
        assert torch.allclose(batch["text_embeds"][j], embeds[0], atol=1e-5, rtol=1e-4)
        assert torch.equal(batch["text_mask"][j], mask[0])
        assert batch["caption"][j] == CAPTIONS[i]


def test_rerun_skips_finished_shards_and_adds_new_ones(tmp_path, shards):
    out = tmp_path / "latents"
    assert run("--input", shards[0], "--output", str(out)) == 0
    first = out / "part-000000.tar"
    stamp = first.stat().st_mtime_ns
    assert run("--input", shards[0], "--input", shards[1], "--output", str(out), "--num-workers", "2") == 0
    assert first.stat().st_mtime_ns == stamp  # not redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["samples"] for k, v in manifest["shards"].items()} == {"part-000000.tar": 5, "part-000001.tar": 2}
    assert not [f for f in os.listdir(out) if ".tmp" in f]


def test_changed_setting_is_refused_until_overwrite(tmp_path, shards, capsys):
    out = tmp_path / "latents"
    assert run("--input", shards[1], "--output", str(out)) == 0
    assert run("--input", shards[1], "--output", str(out), "--num-frames", "9", "--text-max-length", "16") == 2
    err = capsys.readouterr().err
    assert "num_frames" in err and "text_max_length" in err and "--overwrite" in err and "height" not in err
    assert run("--input", shards[1], "--output", str(out), "--num-frames", "9", "--overwrite") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["num_frames"] == 9 and manifest["latent_shape"] == [16, 3, 8, 8]


def test_recipe_supplies_model_id_and_settings(tmp_path, shards, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model:\n  class_path: some.Module\n"
        "data:\n  class_path: psa_train.data.LatentShardDataModule\n  init_args:\n"
        "    model_id: tiny\n    precompute:\n      num_frames: 5\n      height: 32\n      width: 48\n"
    )
    out = tmp_path / "latents"
    args = ["precompute", "--config", str(recipe), "--input", shards[1], "--output", str(out), "--no-progress"]
    assert main(args + ["--num-workers", "0"]) == 0
    s = json.loads((out / "manifest.json").read_text())["settings"]
    assert (s["model_id"], s["num_frames"], s["height"], s["width"]) == ("tiny", 5, 32, 48)
    dm = LatentShardDataModule(train_shards=str(out / "part-000001.tar"), num_workers=0, model_id="tiny",
                               precompute={"num_frames": 5, "height": 32, "width": 48})  # fmt: skip
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["latents"].shape == (1, 16, 2, 4, 6)

    recipe.write_text("data:\n  init_args:\n    model_id: tiny\n    precompute:\n      num_frame: 5\n")
    assert main(args) == 2 and "num_frame" in capsys.readouterr().err
    recipe.write_text("data:\n  init_args:\n    batch_size: 2\n")
    with pytest.raises(SystemExit, match="no model id"):
        main(args)


def test_local_model_directory_loads_like_the_hub_layout(tmp_path, tiny):
    tiny.vae.save_pretrained(tmp_path / "vae")
    tiny.text_encoder.save_pretrained(tmp_path / "text_encoder")
    tiny.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = tve.load_encoders(str(tmp_path))
    clip = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(tve.encode_video(loaded.vae, clip), tve.encode_video(tiny.vae, clip))
    a = tve.encode_text(loaded.tokenizer, loaded.text_encoder, ["a red star"], 8)
    b = tve.encode_text(tiny.tokenizer, tiny.text_encoder, ["a red star"], 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    raw = tiny.vae.encode(clip).latent_dist.mode()
    assert torch.allclose(tve.denormalize_latents(tiny.vae, tve.encode_video(tiny.vae, clip)), raw, atol=1e-6)


def test_help_and_errors(capsys, tmp_path):
    for argv in (["--help"], ["precompute", "--help"], ["make-demo", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0
    assert "precompute" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        top_cli.main(["data", "precompute", "--help"])
    assert exit_.value.code == 0
    assert run("--input", str(tmp_path / "missing.tar"), "--output", str(tmp_path / "o")) == 2
    assert "missing.tar" in capsys.readouterr().err
