"""The embedded demo dataset: short clips of moving shapes with captions, rendered in code.

`make_demo(output)` renders a few hundred mp4 clips (PyAV, h264; mpeg4 when h264 is missing) of
a shape that moves, spins, orbits, grows or shrinks over a plain, gradient, checkered or striped
background, captions each ("A small red star spins clockwise in place quickly on a plain navy
background."), writes them as WebDataset shards, then encodes them into latent shards with the
tiny, untrained demo VAE and text encoder. Each clip's json also carries integer labels
(`shape`, `motion`) with their names, for classification tasks. Everything is a function of
`seed`: the same seed gives byte-identical video shards. Layout::

    <output>/manifest.json                         what is where, labels, settings
    <output>/videos/train-{000000..000003}.tar     224 clips
    <output>/videos/val-000000.tar                 32 clips
    <output>/latents/{train,val}-*.tar             + latents/manifest.json (precompute's)
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor

import av
import numpy as np
import torch
from tqdm.auto import tqdm

from psa_train.models import text_video_encoders as tve
from psa_train.models import tiny_configs

from .precompute import PrecomputeSettings, precompute_latents
from .tario import write_tar

SHAPES = ("square", "triangle", "star", "cross", "ellipse", "heart")
MOTIONS = ("moves right", "moves left", "moves up", "moves down", "spins", "grows", "shrinks", "orbits")
BACKGROUNDS = ("plain", "gradient", "checkered", "striped")
COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 190), "cyan": (40, 210, 220), "magenta": (220, 50, 200),
    "white": (245, 245, 245), "black": (15, 15, 15),
}  # fmt: skip
BACKGROUND_COLORS = {
    "black": (10, 10, 10), "white": (240, 240, 240), "grey": (128, 128, 128), "navy": (20, 30, 90),
    "beige": (225, 210, 170), "teal": (20, 110, 110), "brown": (110, 70, 40), "pink": (240, 170, 190),
}  # fmt: skip

CLIP_FRAMES = 24  # a little longer than the 17 frames trained on, so random starts vary
CLIP_SIZE = tiny_configs.DEMO_HEIGHT
CLIP_FPS = tiny_configs.DEMO_FPS
SUPERSAMPLE = 2


def encode_mp4(frames: np.ndarray, fps: int = CLIP_FPS) -> bytes:
    """uint8 frames `[T, H, W, 3]` -> mp4 bytes (h264, else mpeg4); single-threaded, deterministic."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p" if codec == "libx264" and (frames.shape[1] % 2 or frames.shape[2] % 2) else "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            # x264's macroblock-tree lookahead gave run-to-run different bytes on these tiny frames;
            # without it (and single-threaded) the output is byte-identical for the same frames
            stream.options = {"crf": "20", "preset": "fast", "x264-params": "threads=1:mbtree=0:rc-lookahead=0"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in shape coordinates (unit size, v pointing down)."""
    if kind == "square":
        return np.maximum(abs(u), abs(v)) < 0.8
    if kind == "triangle":
        corners = [(math.cos(a), -math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
        inside = np.ones(u.shape, bool)
        for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1]):
            inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) <= 0
        return inside
    if kind == "star":
        r, a = np.hypot(u, v), np.arctan2(v, u)
        return r < 0.4 + 0.6 * (0.5 + 0.5 * np.cos(5 * a)) ** 2
    if kind == "cross":
        return ((abs(u) < 0.3) & (abs(v) < 1)) | ((abs(v) < 0.3) & (abs(u) < 1))
    if kind == "ellipse":
        return u**2 + (v / 0.55) ** 2 < 1
    if kind == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.15
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0
    raise ValueError(f"unknown shape {kind!r}")


def _background(kind: str, c1: np.ndarray, c2: np.ndarray, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == "plain":
        w = np.zeros((size, size))
    elif kind == "gradient":
        w = yy / (size - 1)
    elif kind == "checkered":
        cell = size // 8
        w = ((yy // cell + xx // cell) % 2).astype(float)
    elif kind == "striped":
        w = ((yy // (size // 8)) % 2).astype(float)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return c1 * (1 - w[..., None]) + c2 * w[..., None]


def _distinct(rng: np.random.Generator, names: list[str], rgb: dict, against: list[np.ndarray]) -> str:
    """A colour name whose RGB is far from every colour in `against`."""
    for _ in range(100):
        name = names[rng.integers(len(names))]
        if all(np.abs(np.array(rgb[name]) - a).sum() > 200 for a in against):
            return name
    return name


def render_clip(index: int, seed: int, frames: int = CLIP_FRAMES, size: int = CLIP_SIZE) -> tuple[np.ndarray, dict]:
    """Clip `index` of the dataset for `seed`: (uint8 frames [T, size, size, 3], metadata)."""
    # labels cycle through a seeded order of all (shape, motion) pairs: balanced in any window
    pairs = len(SHAPES) * len(MOTIONS)
    shape, motion = divmod(int(np.random.default_rng(seed).permutation(pairs)[index % pairs]), len(MOTIONS))
    rng = np.random.default_rng([seed, index])
    bg_kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg1 = list(BACKGROUND_COLORS)[rng.integers(len(BACKGROUND_COLORS))]
    bg2 = _distinct(rng, list(BACKGROUND_COLORS), BACKGROUND_COLORS, [np.array(BACKGROUND_COLORS[bg1])])
    bg_rgbs = [np.array(BACKGROUND_COLORS[bg1], float)] + ([np.array(BACKGROUND_COLORS[bg2], float)] if bg_kind != "plain" else [])
    color = _distinct(rng, list(COLORS), COLORS, bg_rgbs)
    fast = bool(rng.integers(2))
    large = bool(rng.integers(2))
    clockwise = bool(rng.integers(2))

    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)
    scale = np.full(frames, (0.17 if large else 0.11) * rng.uniform(0.9, 1.1))
    angle = np.full(frames, rng.uniform(0, 2 * math.pi))
    cx, cy = np.full(frames, 0.5 + rng.uniform(-0.08, 0.08)), np.full(frames, 0.5 + rng.uniform(-0.08, 0.08))
    travel = (0.55 if fast else 0.3) * rng.uniform(0.9, 1.1)
    name = MOTIONS[motion]
    if name in ("moves right", "moves left", "moves up", "moves down"):
        sign = 1 if name in ("moves right", "moves down") else -1
        pos = 0.5 + sign * travel * (t - 0.5)
        if name in ("moves right", "moves left"):
            cx = pos
        else:
            cy = pos
    elif name == "spins":
        angle = angle + (1 if clockwise else -1) * (2.5 if fast else 1.2) * math.pi * t
    elif name in ("grows", "shrinks"):
        factor = 2.2 if fast else 1.6
        ramp = factor**t if name == "grows" else factor ** (1 - t)
        scale = scale / math.sqrt(factor) * ramp
    elif name == "orbits":
        radius, start = 0.22, rng.uniform(0, 2 * math.pi)
        phase = start + (1 if clockwise else -1) * (2 if fast else 1) * math.pi * t
        cx, cy = 0.5 + radius * np.cos(phase), 0.5 + radius * np.sin(phase)

    hi = size * SUPERSAMPLE
    grid = ((np.arange(hi) + 0.5) / hi).astype(np.float32)
    x, y = grid[None, None, :], grid[None, :, None]
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    inv = (1.0 / scale)[:, None, None]
    u = ((cos * dx + sin * dy) * inv).astype(np.float32)
    v = ((-sin * dx + cos * dy) * inv).astype(np.float32)
    mask = _shape_mask(SHAPES[shape], u, v).astype(np.float32)
    mask = mask.reshape(frames, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))[..., None]
    bg = _background(bg_kind, *[np.array(BACKGROUND_COLORS[c], np.float32) for c in (bg1, bg2)], size)
    video = bg[None].astype(np.float32) * (1 - mask) + np.array(COLORS[color], np.float32) * mask
    video = np.clip(np.rint(video), 0, 255).astype(np.uint8)

    caption = _caption(SHAPES[shape], name, color, large, fast, clockwise, bg_kind, bg1, bg2)
    meta = {
        "caption": caption,
        "shape": shape,
        "shape_name": SHAPES[shape],
        "motion": motion,
        "motion_name": name,
        "color": color,
        "background": bg_kind,
        "background_colors": [bg1] if bg_kind == "plain" else [bg1, bg2],
        "speed": "fast" if fast else "slow",
        "size": "large" if large else "small",
        "index": index,
        "seed": seed,
    }
    return video, meta


def _caption(shape, motion, color, large, fast, clockwise, bg_kind, bg1, bg2) -> str:
    verb = {
        "moves right": "moves from left to right",
        "moves left": "moves from right to left",
        "moves up": "moves upwards",
        "moves down": "moves downwards",
        "spins": f"spins {'clockwise' if clockwise else 'counterclockwise'} in place",
        "grows": "grows larger",
        "shrinks": "shrinks",
        "orbits": f"circles {'clockwise' if clockwise else 'counterclockwise'} around the centre",
    }[motion]
    background = {
        "plain": f"a plain {bg1} background",
        "gradient": f"a {bg1} and {bg2} gradient background",
        "checkered": f"a {bg1} and {bg2} checkered background",
        "striped": f"a {bg1} and {bg2} striped background",
    }[bg_kind]
    size = "large" if large else "small"
    speed = "quickly" if fast else "slowly"
    return f"A {size} {color} {shape} {verb} {speed} on {background}."


def _clip_sample(index: int, seed: int) -> dict:
    frames, meta = render_clip(index, seed)
    return {"__key__": f"{index:06d}", "mp4": encode_mp4(frames), "txt": meta["caption"], "json": json.dumps(meta)}


def _render_shard(path: str, start: int, stop: int, seed: int) -> int:
    """Render clips [start, stop) into the shard at `path`; runs in a worker process."""
    return write_tar(path, (_clip_sample(i, seed) for i in range(start, stop)))


def _pattern(prefix: str, count: int) -> str:
    return f"{prefix}-000000.tar" if count == 1 else f"{prefix}-{{000000..{count - 1:06d}}}.tar"


def make_demo(
    output: str | os.PathLike,
    *,
    num_clips: int = 256,
    num_val: int = 32,
    train_shards: int = 4,
    seed: int = 0,
    latents: bool = True,
    batch_size: int = 32,
    threads: int | None = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Render the demo videos (and their tiny latents) into `output`; returns the manifest.

    `threads` caps torch's CPU threads while encoding (restored after): the tiny VAE is so small
    that one thread beats several on a shared machine. None leaves torch's setting alone.
    """
    if not 0 < num_val < num_clips:
        raise ValueError(f"need 0 < num_val < num_clips, got num_val={num_val}, num_clips={num_clips}")
    if not 0 < train_shards <= num_clips - num_val:
        raise ValueError(f"train_shards must be in [1, {num_clips - num_val}], got {train_shards}")
    output = os.fspath(output)
    if os.path.exists(output) and os.listdir(output):
        if not overwrite:
            raise FileExistsError(f"{output} is not empty; pass --overwrite to replace the demo data there")
        for name in ("videos", "latents", "manifest.json"):
            path = os.path.join(output, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    videos = os.path.join(output, "videos")
    os.makedirs(videos, exist_ok=True)

    num_train = num_clips - num_val
    bounds = [round(k * num_train / train_shards) for k in range(train_shards + 1)]
    jobs = [(os.path.join(videos, f"train-{k:06d}.tar"), bounds[k], bounds[k + 1]) for k in range(train_shards)]
    jobs.append((os.path.join(videos, "val-000000.tar"), num_train, num_clips))
    manifest = {
        "seed": seed,
        "num_clips": num_clips,
        "num_train": num_train,
        "num_val": num_val,
        "clip": {"frames": CLIP_FRAMES, "height": CLIP_SIZE, "width": CLIP_SIZE, "fps": CLIP_FPS},
        "labels": {"shape": list(SHAPES), "motion": list(MOTIONS)},
        "train_videos": f"videos/{_pattern('train', train_shards)}",
        "val_videos": "videos/val-000000.tar",
        "encoders": "tiny (untrained, built in code: psa_train.models.tiny_configs)",
    }
    # Shards are rendered in a forked process while this one encodes the finished ones.
    fork = latents and "fork" in multiprocessing.get_all_start_methods()
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) if fork else None
    previous = torch.get_num_threads()
    try:
        futures = [pool.submit(_render_shard, path, a, b, seed) for path, a, b in jobs] if pool else []
        if threads is not None:
            torch.set_num_threads(threads)
        encoders = tve.load_encoders(tve.TINY) if latents else None
        cache: dict = {}
        with tqdm(total=num_clips, unit="clip", desc="demo", disable=not progress) as pbar:
            for j, (path, a, b) in enumerate(jobs):
                if pool is not None:
                    futures[j].result()
                else:
                    _render_shard(path, a, b, seed)
                if latents:
                    cache = precompute_latents(
                        [path],
                        os.path.join(output, "latents"),
                        PrecomputeSettings.for_model(tve.TINY),
                        batch_size=batch_size,
                        device="cpu",
                        progress=False,
                        encoders=encoders,
                    )
                pbar.update(b - a)
    finally:
        torch.set_num_threads(previous)
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if latents:
        manifest["train_latents"] = f"latents/{_pattern('train', train_shards)}"
        manifest["val_latents"] = "latents/val-000000.tar"
        manifest["latent_settings"] = cache["settings"]
        manifest["latent_shape"] = cache.get("latent_shape")
    with open(os.path.join(output, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest
