"""One raw video sample (`{key}.mp4` + `{key}.txt|json`) -> clip + caption, and batching them.

Kept free of Lightning so that the data tools start fast. Batches are
`{"video": [B, 3, T, H, W] in [-1, 1], "caption": [str], "key": [str], "meta": [dict]}`;
`meta` is the sample's json (empty when it has none). With a `label_key` the batch also holds
`"label"`: a LongTensor [B] read from the sample's `{key}.<label_key>` member (e.g. `.cls`,
WebDataset's class-label convention) or else from that field of its json (e.g. the demo's
`shape` / `motion`); a sample without it is bad (skipped and counted).
"""

from __future__ import annotations

import json
import random

import torch

from .sharding import BadSample
from .tario import RawSample
from .video_decode import VideoDecodeError, decode_video

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
CAPTION_KEYS = ("caption", "text", "prompt")


def read_label(raw: RawSample, meta: dict, label_key: str) -> int:
    """Integer class label: the `{key}.<label_key>` member if present, else `meta[label_key]`."""
    value = raw[label_key].decode("utf-8", errors="replace").strip() if label_key in raw else meta.get(label_key)
    try:
        if isinstance(value, bool) or value is None or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise BadSample(f"no integer label {label_key!r} (got {value!r})") from None


def read_caption(raw: RawSample) -> tuple[str, dict]:
    """(caption, json meta) of a raw sample: `.txt` wins, else json caption/text/prompt, else ""."""
    meta: dict = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as err:
            raise BadSample(f"invalid json ({err})") from err
        if not isinstance(meta, dict):
            meta = {"value": meta}
    if "txt" in raw:
        return raw["txt"].decode("utf-8", errors="replace").strip(), meta
    for key in CAPTION_KEYS:
        if isinstance(meta.get(key), str):
            return meta[key].strip(), meta
    return "", meta


class VideoSampleDecoder:
    """Raw sample -> `{"video", "caption", "key", "meta"}`; picklable for DataLoader workers.

    In training the start frame is random but reproducible: seeded by (seed, epoch, shard, key).
    """

    def __init__(
        self,
        num_frames: int,
        height: int,
        width: int,
        *,
        fps: float | None = None,
        frame_stride: int = 1,
        train: bool = False,
        seed: int = 0,
        label_key: str | None = None,
    ) -> None:
        self.num_frames, self.height, self.width = num_frames, height, width
        self.fps, self.frame_stride, self.train, self.seed = fps, frame_stride, train, seed
        self.label_key = label_key

    def __call__(self, raw: RawSample, epoch: int) -> dict:
        ext = next((e for e in VIDEO_EXTENSIONS if e in raw), None)
        if ext is None:
            raise BadSample(f"no video member (looked for {', '.join(VIDEO_EXTENSIONS)})")
        rng = random.Random(f"{self.seed}:{epoch}:{raw['__url__']}:{raw['__key__']}") if self.train else None
        try:
            video = decode_video(
                raw[ext],
                self.num_frames,
                self.height,
                self.width,
                fps=self.fps,
                stride=self.frame_stride,
                random_start=self.train,
                rng=rng,
            )
        except VideoDecodeError as err:
            raise BadSample(str(err)) from err
        caption, meta = read_caption(raw)
        sample = {"video": video, "caption": caption, "key": raw["__key__"], "meta": meta}
        if self.label_key is not None:
            sample["label"] = read_label(raw, meta, self.label_key)
        return sample


def collate_videos(samples: list[dict]) -> dict:
    batch = {
        "video": torch.stack([s["video"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "key": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
    if samples and all("label" in s for s in samples):
        batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
    return batch
