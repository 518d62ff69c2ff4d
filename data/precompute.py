"""Encode video shards once into latent shards (Wan VAE + UMT5), so training never runs them.

One output shard per input shard, same file name, written atomically: a finished shard is skipped
when the run is repeated (resume after a crash or on new input shards). The manifest records the
encoders and every data setting; a cache made with other settings is refused with the list of
differing keys, unless `overwrite` is given.

Recipe coupling (`settings_from_recipe`) is deliberately loose: the model id is the first of
RECIPE_MODEL_ID_KEYS found in the YAML, and settings come from `data.init_args.precompute` (the
LatentShardDataModule argument of the same name, which checks the cache at `setup`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from psa_train.models import text_video_encoders as tve
from psa_train.models import tiny_configs

from .latent_samples import encode_latent_sample
from .manifest import FORMAT, check_settings, read_manifest, write_manifest
from .sharding import ShardStream
from .skipped import SkipCounter, log
from .tario import check_local_shards, count_tar_samples, expand_shards, is_local, write_tar
from .video_samples import VideoSampleDecoder, collate_videos

RECIPE_MODEL_ID_KEYS = (
    "data.init_args.model_id",
    "data.model_id",
    "model.init_args.model_id",
    "model.model_id",
    "model_id",
)
RECIPE_SETTINGS_KEYS = ("data.init_args.precompute", "data.precompute")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

WAN_DEFAULTS = {"num_frames": 81, "height": 480, "width": 832, "fps": 16.0, "frame_stride": 1, "text_max_length": 512}
TINY_DEFAULTS = {
    "num_frames": tiny_configs.DEMO_NUM_FRAMES,
    "height": tiny_configs.DEMO_HEIGHT,
    "width": tiny_configs.DEMO_WIDTH,
    "fps": None,
    "frame_stride": 1,
    "text_max_length": tiny_configs.TEXT_MAX_LENGTH,
}


@dataclass
class PrecomputeSettings:
    """Everything that changes the cached tensors; recorded in (and checked against) the manifest."""

    model_id: str
    num_frames: int
    height: int
    width: int
    fps: float | None = None
    frame_stride: int = 1
    text_max_length: int = 512
    latent_dtype: str = "float32"
    vae_dtype: str = "float32"
    text_dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("latent_dtype", "vae_dtype", "text_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {sorted(DTYPES)}, got {getattr(self, name)!r}")
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8 (VAE), got {self.height}x{self.width}")
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k + 1 (VAE), got {self.num_frames}")

    @classmethod
    def for_model(cls, model_id: str, **overrides: Any) -> PrecomputeSettings:
        """Defaults for the model (tiny demo sizes, or Wan2.1's 81 x 480 x 832 at 16 fps)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"model_id"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown precompute setting(s) {unknown}; accepted: {sorted(known)}")
        values = dict(TINY_DEFAULTS if model_id == tve.TINY else WAN_DEFAULTS)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if overrides.get("frame_stride") is not None and overrides.get("fps") is None:
            values["fps"] = None  # an explicit stride replaces the default fps
        return cls(model_id=model_id, **values)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "latent_sample": "mode", "latent_normalization": "wan"}


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def settings_from_recipe(path: str) -> tuple[str | None, dict[str, Any]]:
    """(model id, precompute settings) read from a Lightning YAML recipe."""
    import yaml

    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    model_id = next((v for k in RECIPE_MODEL_ID_KEYS if (v := _lookup(recipe, k)) is not None), None)
    settings = next((v for k in RECIPE_SETTINGS_KEYS if (v := _lookup(recipe, k)) is not None), None) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: data.init_args.precompute must be a mapping, got {settings!r}")
    return (None if model_id is None else str(model_id)), settings


def output_names(shards: Sequence[str]) -> list[str]:
    """Output file name per input shard: its base name, or shard-NNNNNN.tar when ambiguous."""
    names = [os.path.basename(s.split()[-1]) if s.startswith("pipe:") else os.path.basename(s) for s in shards]
    if len(set(names)) != len(names) or not all(n.endswith(".tar") for n in names):
        names = [f"shard-{i:06d}.tar" for i in range(len(shards))]
    return names


def _encode_shard(
    url: str,
    encoders: tve.TextVideoEncoders,
    settings: PrecomputeSettings,
    *,
    batch_size: int,
    num_workers: int,
    counter: SkipCounter,
    manifest: dict,
    pbar: tqdm,
) -> Iterator[dict]:
    decoder = VideoSampleDecoder(
        settings.num_frames,
        settings.height,
        settings.width,
        fps=settings.fps,
        frame_stride=settings.frame_stride,
    )
    stream = ShardStream([url], decoder, split="sample", skipped=counter, rank=0, world_size=1)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_videos)
    latent_dtype = DTYPES[settings.latent_dtype]
    for batch in loader:
        latents = tve.encode_video(encoders.vae, batch["video"]).float().cpu()
        embeds, mask = tve.encode_text(
            encoders.tokenizer, encoders.text_encoder, batch["caption"], settings.text_max_length
        )
        embeds = embeds.float().cpu()
        manifest["latent_shape"], manifest["text_dim"] = list(latents.shape[1:]), int(embeds.shape[-1])
        for i, key in enumerate(batch["key"]):
            yield encode_latent_sample(
                key, latents[i], embeds[i], mask[i], batch["caption"][i], batch["meta"][i], latent_dtype
            )
        pbar.update(len(batch["key"]))


def precompute_latents(
    inputs: str | Sequence[str],
    output: str | os.PathLike,
    settings: PrecomputeSettings,
    *,
    batch_size: int = 4,
    num_workers: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    encoders: tve.TextVideoEncoders | None = None,
) -> dict:
    """Encode `inputs` (video shards) into latent shards under `output`; returns the manifest."""
    shards = expand_shards(inputs)
    check_local_shards(shards)
    names = output_names(shards)
    output = os.fspath(output)
    os.makedirs(output, exist_ok=True)
    wanted = settings.as_dict()
    hint = "Pass --overwrite to replace it, or choose another --output."
    manifest = read_manifest(output)
    if manifest is not None and overwrite:
        for name in manifest.get("shards", {}):
            if os.path.exists(os.path.join(output, name)):
                os.remove(os.path.join(output, name))
        manifest = None
    if manifest is not None:
        check_settings(manifest["settings"], wanted, output, hint)

    if manifest is not None and all(
        n in manifest["shards"] and os.path.isfile(os.path.join(output, n)) for n in names
    ):
        log.info("precompute: all %d shards already done in %s", len(names), output)
        return manifest  # settings matched above; no need to load the encoders

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if encoders is None:
        encoders = tve.load_encoders(
            settings.model_id,
            device=device,
            vae_dtype=DTYPES[settings.vae_dtype],
            text_dtype=DTYPES[settings.text_dtype],
        )
    wanted["encoder_fingerprint"] = encoders.fingerprint()
    if manifest is not None:
        check_settings(manifest["settings"], wanted, output, hint)
    else:
        manifest = {"format": FORMAT, "settings": wanted, "shards": {}}

    done = manifest["shards"]
    todo = [(u, n) for u, n in zip(shards, names) if not (n in done and os.path.isfile(os.path.join(output, n)))]
    if len(todo) < len(shards):
        log.info("precompute: %d of %d shards already done in %s", len(shards) - len(todo), len(shards), output)
    total = sum(count_tar_samples(u) for u, _ in todo) if all(is_local(u) for u, _ in todo) else None
    with tqdm(total=total, unit="clip", desc="precompute", disable=not progress) as pbar:
        for url, name in todo:
            counter = SkipCounter(max(1, num_workers))
            samples = _encode_shard(
                url,
                encoders,
                settings,
                batch_size=batch_size,
                num_workers=num_workers,
                counter=counter,
                manifest=manifest,
                pbar=pbar,
            )
            count = write_tar(os.path.join(output, name), samples)
            done[name] = {"input": url, "samples": count, "skipped": counter.value}
            write_manifest(output, manifest)
    return manifest
