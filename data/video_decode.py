"""Decoding a video from in-memory bytes into a float clip `[C, T, H, W]` in [-1, 1].

decord reads the frames at their native size (PyAV where decord is not installed); resizing and
centre-cropping is done with torch (bilinear, antialiased), because decord's own resizer gives
wrong results for some widths. A cheap PyAV probe runs first so that garbage bytes fail cleanly
instead of decord dumping the buffer to stderr. Every failure is a `VideoDecodeError`, which the
data modules skip and count.
"""

from __future__ import annotations

import io
import random

import av
import numpy as np
import torch
import torch.nn.functional as F

try:
    import decord
except ImportError:  # no decord wheels for Arm; PyAV decodes instead
    decord = None

RESIZE_CHUNK = 8  # frames resized at a time, bounds memory for large native sizes


class VideoDecodeError(ValueError):
    """The bytes are not a decodable video, or it has too few frames."""


def sample_frame_indices(
    num_available: int,
    num_frames: int,
    *,
    native_fps: float | None = None,
    fps: float | None = None,
    stride: int = 1,
    random_start: bool = False,
    rng: random.Random | None = None,
) -> list[int]:
    """Indices of `num_frames` frames spaced to reach `fps` (or every `stride`-th frame).

    The start is random (training) or centred (validation). Raises VideoDecodeError when the
    clip is too short to hold the requested span.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not native_fps or native_fps <= 0:
            raise VideoDecodeError("the video reports no frame rate, so fps cannot be matched")
        step = native_fps / fps
    else:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        step = float(stride)
    offsets = [round(i * step) for i in range(num_frames)]
    span = offsets[-1] + 1
    if num_available < span:
        raise VideoDecodeError(f"too short: {num_available} frames, need {span}")
    slack = num_available - span
    start = (rng or random).randint(0, slack) if random_start else slack // 2
    return [start + o for o in offsets]


def resize_center_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 frames `[T, H, W, C]` -> float `[C, T, height, width]` in [-1, 1].

    Scales so that the target fits inside the frame (aspect ratio kept), then crops the centre.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, C], got shape {tuple(frames.shape)}")
    _, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = []
    for chunk in frames.split(RESIZE_CHUNK):
        x = chunk.permute(0, 3, 1, 2).float()
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        out.append(x[:, :, top : top + height, left : left + width])
    clip = torch.cat(out).div_(127.5).sub_(1.0).clamp_(-1.0, 1.0)
    return clip.permute(1, 0, 2, 3).contiguous()


def _probe(data: bytes) -> tuple[int, float]:
    """(frame count from the header, 0 if unknown; average fps) or VideoDecodeError."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError("no video stream")
            stream = container.streams.video[0]
            return int(stream.frames or 0), float(stream.average_rate or 0)
    except VideoDecodeError:
        raise
    except Exception as err:  # PyAV raises many error types for bad input
        raise VideoDecodeError(f"cannot open container ({type(err).__name__}: {err})") from err


def _read_decord(data: bytes, pick, threads: int) -> torch.Tensor:
    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=threads)
        total, native_fps = len(reader), reader.get_avg_fps()
    except Exception as err:
        raise VideoDecodeError(f"decord cannot read it ({type(err).__name__}: {err})") from err
    indices = pick(total, native_fps)
    try:
        return torch.from_numpy(reader.get_batch(indices).asnumpy())
    except Exception as err:
        raise VideoDecodeError(f"decoding failed ({type(err).__name__}: {err})") from err


def _read_pyav(data: bytes, pick, total: int, native_fps: float) -> torch.Tensor:
    """Fallback where decord is not installed (it has no wheels for Arm): decode up to the last
    needed frame. When the header has no frame count, every frame is decoded first."""
    frames = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if total > 0:
                indices = pick(total, native_fps)
                for frame in container.decode(video=0):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if len(frames) > max(indices):
                        break
            else:
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
                indices = pick(len(frames), native_fps)
    except VideoDecodeError:
        raise
    except Exception as err:
        raise VideoDecodeError(f"decoding failed ({type(err).__name__}: {err})") from err
    if len(frames) <= max(indices):
        raise VideoDecodeError(f"truncated: {len(frames)} frames decoded, header says {total}")
    return torch.from_numpy(np.stack([frames[i] for i in indices]))


def decode_video(
    data: bytes,
    num_frames: int,
    height: int,
    width: int,
    *,
    fps: float | None = None,
    stride: int = 1,
    random_start: bool = False,
    rng: random.Random | None = None,
    threads: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
    """Decode `num_frames` frames of the video in `data` to float `[3, T, height, width]`.

    `backend`: "decord", "pyav", or "auto" (decord when installed, else PyAV).
    """
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'pyav', got {backend!r}")
    if backend == "auto":
        backend = "decord" if decord is not None else "pyav"
    if backend == "decord" and decord is None:
        raise ValueError("backend='decord' but decord is not installed")
    if not data:
        raise VideoDecodeError("empty file")
    total, native_fps = _probe(data)

    def pick(available: int, rate: float) -> list[int]:
        return sample_frame_indices(
            available, num_frames, native_fps=rate, fps=fps, stride=stride, random_start=random_start, rng=rng
        )

    if backend == "decord":
        frames = _read_decord(data, pick, threads)
    else:
        frames = _read_pyav(data, pick, total, native_fps)
    if frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise VideoDecodeError(f"decoder returned frames of shape {tuple(frames.shape)}")
    return resize_center_crop(frames, height, width)
