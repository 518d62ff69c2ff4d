"""The embedded demo dataset: deterministic, captioned truthfully, loadable as videos and latents."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from one_thread import one_torch_thread  # noqa: F401  (autouse)
from psa_train.data import LatentShardDataModule, VideoShardDataModule
from psa_train.data.cli import main
from psa_train.data.demo import COLORS, MOTIONS, SHAPES, make_demo, render_clip
from psa_train.data.tario import expand_shards

from psa_train.models import tiny_configs as tc

SMALL = {"num_clips": 14, "num_val": 4, "train_shards": 2, "progress": False}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, make_demo(out, seed=3, **SMALL)


def tar_bytes(root, manifest, key):
    return [open(p, "rb").read() for p in expand_shards(os.path.join(root, manifest[key]))]


def test_layout_and_contract_shapes(demo):
    root, manifest = demo
    for key in ("train_videos", "val_videos", "train_latents", "val_latents"):
        assert all(os.path.isfile(p) for p in expand_shards(os.path.join(root, manifest[key])))
    assert manifest["labels"] == {"shape": list(SHAPES), "motion": list(MOTIONS)}
    videos = VideoShardDataModule(
        train_shards=os.path.join(root, manifest["train_videos"]), num_frames=tc.DEMO_NUM_FRAMES,
        height=tc.DEMO_HEIGHT, width=tc.DEMO_WIDTH, batch_size=5, num_workers=0,
    )  # fmt: skip
    batch = next(iter(videos.train_dataloader()))
    assert batch["video"].shape == (5, 3, 17, 64, 64)
    latents = LatentShardDataModule(
        train_shards=os.path.join(root, manifest["train_latents"]),
        val_shards=os.path.join(root, manifest["val_latents"]),
        model_id="tiny", precompute={"num_frames": 17, "height": 64, "width": 64, "text_max_length": 32},
        batch_size=2, num_workers=0,
    )  # fmt: skip
    latents.setup("fit")
    train = list(latents.train_dataloader())
    assert len(train) == 5 and sum(len(b["key"]) for b in latents.val_dataloader()) == 4
    b = train[0]
    assert b["latents"].shape == (2, *tc.LATENT_SHAPE) == (2, 16, 5, 8, 8)
    assert b["text_embeds"].shape == (2, tc.TEXT_MAX_LENGTH, tc.TEXT_DIM) == (2, 32, 32)
    assert b["text_mask"].shape == (2, 32) and 0.3 < b["latents"].std() < 3  # roughly unit-scaled
    for meta, caption in zip(b["meta"], b["caption"]):
        assert SHAPES[meta["shape"]] == meta["shape_name"] and MOTIONS[meta["motion"]] == meta["motion_name"]
        assert meta["shape_name"] in caption and meta["color"] in caption and caption == meta["caption"]


def test_same_seed_same_bytes_other_seed_other_clips(demo, tmp_path):
    root, manifest = demo
    again = make_demo(tmp_path / "again", seed=3, **SMALL)
    assert again == manifest
    assert tar_bytes(root, manifest, "train_videos") == tar_bytes(tmp_path / "again", again, "train_videos")
    assert tar_bytes(root, manifest, "val_videos") == tar_bytes(tmp_path / "again", again, "val_videos")

    def all_latents(base):
        dm = LatentShardDataModule(val_shards=os.path.join(base, manifest["train_latents"]), num_workers=0)
        return {k: lat for b in dm.val_dataloader() for k, lat in zip(b["key"], b["latents"])}

    a, b = all_latents(root), all_latents(tmp_path / "again")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = make_demo(tmp_path / "other", seed=4, latents=False, **SMALL)
    assert tar_bytes(root, manifest, "train_videos") != tar_bytes(tmp_path / "other", other, "train_videos")


def test_every_caption_word_is_one_token():
    vocab = tc.tokenizer_vocab()
    tokenizer = tc.build_tiny_tokenizer()
    metas = [render_clip(i, seed=0)[1] for i in range(48)]
    for meta in metas:
        ids = tokenizer(meta["caption"]).input_ids
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert "<unk>" not in tokens and not any(t.startswith("##") for t in tokens), meta["caption"]
        assert all(t in vocab for t in tokens) and tokens[-1] == "</s>"
    labels = {(m["shape"], m["motion"]) for m in metas}
    assert len(labels) == len(SHAPES) * len(MOTIONS)  # every pair within 48 consecutive clips


def shape_track(frames: np.ndarray, color: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: area, centroid x, centroid y of the pixels of the shape's colour."""
    mask = np.abs(frames.astype(int) - np.array(COLORS[color])).sum(-1) < 40
    area = mask.sum(axis=(1, 2)).astype(float)
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    cx = (mask * xs).sum(axis=(1, 2)) / np.maximum(area, 1)
    cy = (mask * ys).sum(axis=(1, 2)) / np.maximum(area, 1)
    return area, cx, cy


def test_captions_describe_the_motion():
    checked = set()
    for i in range(96):
        frames, meta = render_clip(i, seed=0)
        if meta["background"] == "gradient":
            continue  # a gradient can pass near the shape's colour; the others stay far from it
        area, cx, cy = shape_track(frames, meta["color"])
        motion = meta["motion_name"]
        first, last = slice(0, 3), slice(-3, None)
        if motion == "moves right":
            assert cx[last].mean() - cx[first].mean() > 8
        elif motion == "moves left":
            assert cx[first].mean() - cx[last].mean() > 8
        elif motion == "moves down":
            assert cy[last].mean() - cy[first].mean() > 8
        elif motion == "moves up":
            assert cy[first].mean() - cy[last].mean() > 8
        elif motion == "grows":
            assert area[last].mean() > 1.4 * area[first].mean()
        elif motion == "shrinks":
            assert area[first].mean() > 1.4 * area[last].mean()
        elif motion == "orbits":
            assert np.hypot(cx - cx.mean(), cy - cy.mean()).mean() > 5
        elif motion == "spins":
            assert abs(cx[last].mean() - cx[first].mean()) < 3
            assert (frames[1:-1] != frames[0]).any(axis=-1).sum(axis=(1, 2)).min() > 10  # it turns
        checked.add(motion)
    assert checked == set(MOTIONS)


def test_cli_make_demo_and_refuses_a_full_directory(tmp_path, capsys):
    out = str(tmp_path / "d")
    args = ["make-demo", "--output", out, "--num-clips", "6", "--num-val", "2", "--train-shards", "1", "--no-progress"]
    assert main(args + ["--no-latents"]) == 0
    assert sorted(os.listdir(os.path.join(out, "videos"))) == ["train-000000.tar", "val-000000.tar"]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert manifest["train_latents"] == "latents/train-000000.tar" and manifest["num_train"] == 4
