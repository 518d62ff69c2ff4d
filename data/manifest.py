"""The manifest of a latent cache: what made it, and how many samples each shard holds.

`<output>/manifest.json` looks like::

    {"format": "psa-train/latents-v1",
     "settings": {"model_id": ..., "encoder_fingerprint": ..., "num_frames": ..., "height": ...,
                  "width": ..., "fps": ..., "frame_stride": ..., "text_max_length": ...,
                  "latent_dtype": ..., "encoder_dtype": ..., "latent_sample": "mode"},
     "latent_shape": [C, T, H, W], "text_dim": D,
     "shards": {"train-000000.tar": {"input": url, "samples": n, "skipped": k}, ...}}

Any difference in `settings` means the cache cannot be reused (`CacheMismatchError`).
"""

from __future__ import annotations

import json
import os
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "psa-train/latents-v1"


class CacheMismatchError(ValueError):
    """A latent cache was made with other settings than the ones asked for."""


def manifest_path(directory: str | os.PathLike) -> str:
    return os.path.join(os.fspath(directory), MANIFEST_NAME)


def read_manifest(directory: str | os.PathLike) -> dict | None:
    path = manifest_path(directory)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise CacheMismatchError(f"{path} is not a psa-train latent manifest (format {manifest.get('format')!r})")
    return manifest


def write_manifest(directory: str | os.PathLike, manifest: dict) -> None:
    """Write atomically, so a crash never leaves half a manifest."""
    path = manifest_path(directory)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def differing_settings(cached: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys of `wanted` whose value differs from (or is missing in) `cached`."""
    missing = object()
    return [k for k in sorted(wanted) if cached.get(k, missing) != wanted[k]]


def check_settings(cached: dict[str, Any], wanted: dict[str, Any], where: str, hint: str) -> None:
    """Raise CacheMismatchError naming every differing key with both values."""
    keys = differing_settings(cached, wanted)
    if keys:
        diffs = "; ".join(f"{k}: cache has {cached.get(k)!r}, wanted {wanted[k]!r}" for k in keys)
        raise CacheMismatchError(f"latent cache {where} was made with other settings ({diffs}). {hint}")
