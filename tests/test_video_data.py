"""Video decoding and the raw video DataModule, on real mp4 files written with PyAV."""

from __future__ import annotations

import json
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from one_thread import one_torch_thread  # noqa: F401  (autouse)
from psa_train.data import (
    ShardStream,
    VideoDecodeError,
    VideoShardDataModule,
    decode_video,
    resize_center_crop,
    sample_frame_indices,
    sharding,
)
from psa_train.data.demo import encode_mp4
from psa_train.data.tario import expand_shards, write_tar
from torch.utils.data import DataLoader, get_worker_info


def ramp_frames(n: int, height: int, width: int, step: int = 10) -> np.ndarray:
    """Grey frames whose level is i * step, so a decoded frame tells its index."""
    levels = np.minimum(np.arange(n) * step, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def level(i: int, step: int = 10) -> float:
    return min(i * step, 255) / 127.5 - 1.0


# -- frame sampling ------------------------------------------------------------------------------


def test_frame_indices_stride_fps_and_start():
    assert sample_frame_indices(20, 4, stride=3) == [5, 8, 11, 14]  # span 10, centred in 20
    assert sample_frame_indices(30, 5, native_fps=30.0, fps=10.0) == [8, 11, 14, 17, 20]
    assert sample_frame_indices(10, 10) == list(range(10))
    rng = random.Random(0)
    starts = {sample_frame_indices(40, 8, stride=2, random_start=True, rng=rng)[0] for _ in range(200)}
    assert min(starts) == 0 and max(starts) == 40 - 15 and len(starts) > 20
    with pytest.raises(VideoDecodeError, match="too short"):
        sample_frame_indices(3, 17)
    with pytest.raises(VideoDecodeError, match="frame rate"):
        sample_frame_indices(30, 4, native_fps=0.0, fps=8.0)


def test_resize_center_crop_takes_the_centre_exactly():
    frames = torch.arange(10.0).view(1, 1, 10, 1).expand(2, 4, 10, 3)  # value = column index
    out = resize_center_crop(frames, 4, 4)
    assert out.shape == (3, 2, 4, 4)
    assert torch.allclose(out[0, 0, 0], torch.tensor([3.0, 4.0, 5.0, 6.0]) / 127.5 - 1)


@settings(max_examples=30, deadline=None)
@given(
    t=st.integers(1, 3),
    h=st.integers(1, 41),
    w=st.integers(1, 41),
    th=st.integers(1, 25),
    tw=st.integers(1, 25),
    value=st.integers(0, 255),
)
def test_resize_center_crop_any_size(t, h, w, th, tw, value):
    frames = torch.full((t, h, w, 3), value, dtype=torch.uint8)
    out = resize_center_crop(frames, th, tw)
    assert out.shape == (3, t, th, tw)
    assert torch.allclose(out, torch.full_like(out, value / 127.5 - 1), atol=1e-4)


# -- decoding real files -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(45, 67), (64, 64), (33, 97)])
@pytest.mark.parametrize("target", [(32, 32), (17, 23), (48, 80)])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_video_odd_sizes_and_frame_order(size, target, backend):
    data = encode_mp4(ramp_frames(24, *size))
    clip = decode_video(data, 5, *target, stride=2, backend=backend)
    assert clip.shape == (3, 5, *target) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    start = (24 - 9) // 2  # centred
    expected = torch.tensor([level(start + 2 * k) for k in range(5)])
    assert torch.allclose(clip.mean(dim=(0, 2, 3)), expected, atol=0.04)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_video_resamples_fps_and_random_start(backend):
    data = encode_mp4(ramp_frames(24, 32, 32), fps=12)
    clip = decode_video(data, 4, 32, 32, fps=4.0, random_start=True, rng=random.Random(1), backend=backend)
    means = clip.mean(dim=(0, 2, 3))
    steps = (means[1:] - means[:-1]) * 127.5
    assert torch.allclose(steps, torch.full_like(steps, 30.0), atol=5)  # every 3rd frame


@pytest.mark.parametrize(
    "data", [b"", b"definitely not a video" * 40, None], ids=["empty", "garbage", "truncated"]
)
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_decode_video_bad_bytes_raise(data, backend):
    if data is None:
        good = encode_mp4(ramp_frames(24, 32, 32))
        data = good[: len(good) // 2]
    with pytest.raises(VideoDecodeError):
        decode_video(data, 8, 32, 32, backend=backend)
    with pytest.raises(VideoDecodeError, match="too short"):
        decode_video(encode_mp4(ramp_frames(3, 32, 32)), 8, 32, 32, backend=backend)


# -- shards and the DataModule -----------------------------------------------------------------


def write_video_shard(path, n_good=6, bad=True, frames=20, size=(48, 80)):
    samples = []
    for i in range(n_good):
        clip = encode_mp4(ramp_frames(frames, *size))
        if i % 2:
            samples.append({"__key__": f"good{i}", "mp4": clip, "json": json.dumps({"caption": f"clip {i}", "label": i})})
        else:
            samples.append({"__key__": f"good{i}", "mp4": clip, "txt": f"clip {i}"})
    if bad:
        samples.insert(2, {"__key__": "corrupt", "mp4": b"\x00\x01garbage" * 100, "txt": "bad"})
        samples.insert(4, {"__key__": "short", "mp4": encode_mp4(ramp_frames(3, *size)), "txt": "3 frames"})
        good = encode_mp4(ramp_frames(frames, *size))
        samples.append({"__key__": "truncated", "mp4": good[: len(good) // 3], "txt": "cut"})
    write_tar(path, samples)
    return str(path)


def test_datamodule_batches_skip_and_count_bad_videos(tmp_path, caplog):
    shard = write_video_shard(tmp_path / "videos-000000.tar")
    dm = VideoShardDataModule(
        train_shards=shard, num_frames=9, height=32, width=40, batch_size=2, num_workers=0, shuffle_buffer=4
    )
    caplog.set_level(logging.WARNING, logger="psa_train.data")
    for _ in range(2):  # two epochs: counted twice, warned once
        batches = list(dm.train_dataloader())
        assert len(batches) == 3
        for b in batches:
            assert b["video"].shape == (2, 3, 9, 32, 40) and b["video"].dtype == torch.float32
            assert b["video"].min() >= -1 and b["video"].max() <= 1
        keys = sorted(k for b in batches for k in b["key"])
        assert keys == [f"good{i}" for i in range(6)]
        captions = {k: c for b in batches for k, c in zip(b["key"], b["caption"])}
        assert captions["good1"] == "clip 1" and captions["good2"] == "clip 2"
    assert dm.skipped == 6
    warned = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(warned) == 3
    assert {w.split(":")[1] for w in warned} == {"corrupt", "short", "truncated"}


def test_two_workers_see_disjoint_samples_covering_one_shard(tmp_path):
    shard = write_video_shard(tmp_path / "one.tar", n_good=8, bad=False, frames=12, size=(32, 32))
    dm = VideoShardDataModule(train_shards=shard, num_frames=5, height=16, width=16, num_workers=2, batch_size=1)

    def tag(samples):
        return get_worker_info().id, [s["key"] for s in samples]

    seen: dict[int, list[str]] = {0: [], 1: []}
    for worker, keys in DataLoader(dm.make_stream([shard], train=True), batch_size=2, num_workers=2, collate_fn=tag):
        seen[worker] += keys
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"good{i}" for i in range(8)]

    loader = dm.train_dataloader()  # the real loader: each sample once, exact length
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == [f"good{i}" for i in range(8)] and len(loader) == 8


def write_text_shards(tmp_path, sizes):
    paths = []
    for s, n in enumerate(sizes):
        path = tmp_path / f"text-{s:06d}.tar"
        write_tar(path, [{"__key__": f"s{s}k{i}", "txt": "x"} for i in range(n)])
        paths.append(str(path))
    return paths


def test_pipe_urls_and_brace_patterns(tmp_path):
    write_text_shards(tmp_path, [2, 3])
    urls = f"pipe:cat {tmp_path}/text-000000.tar::{tmp_path}/text-{{000001..000001}}.tar"
    stream = ShardStream(expand_shards(urls), lambda raw, epoch: raw["__key__"], rank=0, world_size=1)
    assert list(stream) == ["s0k0", "s0k1", "s1k0", "s1k1", "s1k2"]


@pytest.mark.parametrize("sizes", [[7], [4, 5, 6], [3, 3, 3, 3], [2, 4, 3, 5, 1]])
@pytest.mark.parametrize("split", ["auto", "shard", "sample"])
def test_ranks_and_workers_see_each_sample_once(tmp_path, monkeypatch, sizes, split):
    shards = write_text_shards(tmp_path, sizes)
    world, workers = 2, 2
    seen = []
    for rank in range(world):
        for worker in range(workers):
            info = SimpleNamespace(id=worker, num_workers=workers)
            monkeypatch.setattr(sharding, "get_worker_info", lambda info=info: info)
            stream = ShardStream(
                shards, lambda raw, epoch: raw["__key__"], shuffle=True, buffer_size=3, seed=1,
                split=split, equalize=False, rank=rank, world_size=world,
            )  # fmt: skip
            seen.append(list(stream))
    flat = [k for part in seen for k in part]
    assert len(flat) == len(set(flat)) == sum(sizes)


def test_equalized_consumers_and_seeded_epochs(tmp_path, monkeypatch):
    sizes = [4, 5, 6]
    shards = write_text_shards(tmp_path, sizes)

    def run(rank, epoch, seed=0):
        stream = ShardStream(
            shards, lambda raw, e: raw["__key__"], shuffle=True, buffer_size=4, seed=seed,
            counts=sizes, rank=rank, world_size=2,
        )  # fmt: skip
        stream.set_epoch(epoch)
        return list(stream)

    a, b = run(0, 0), run(1, 0)
    assert len(a) == len(b) == sum(sizes) // 2 and not set(a) & set(b)
    assert run(0, 0) == a  # same seed and epoch: same order
    assert run(0, 1) != a and run(0, 0, seed=5) != a
