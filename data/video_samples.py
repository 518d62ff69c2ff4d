"""One raw video sample (`{key}.mp4` + `{key}.txt|json`) -> clip + caption, and batching them.

Kept free of Lightning so that the data tools start fast. Batches are
`{"video": [B, 3, T, H, W] in [-1, 1], "caption": [str], "key": [str], "meta": [dict]}`;
`meta` is the sample's json (empty when it has none).
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
    ) -> None:
        self.num_frames, self.height, self.width = num_frames, height, width
        self.fps, self.frame_stride, self.train, self.seed = fps, frame_stride, train, seed

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
        return {"video": video, "caption": caption, "key": raw["__key__"], "meta": meta}


def collate_videos(samples: list[dict]) -> dict:
    return {
        "video": torch.stack([s["video"] for s in samples]),
        "caption": [s["caption"] for s in samples],
        "key": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }
