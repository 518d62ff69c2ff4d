"""LightningDataModules over WebDataset shards, latent precompute and the demo data maker.

Names are imported on first use, so that the data tools (`psa-train data ...`) start without
loading Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BadSample": "sharding",
    "CacheMismatchError": "manifest",
    "LatentShardDataModule": "latent_shards",
    "LoaderState": "sharding",
    "PrecomputeSettings": "precompute",
    "ResumableLoader": "sharding",
    "ShardStream": "sharding",
    "SkipCounter": "skipped",
    "SkippedSamplesLogger": "skip_logger",
    "VideoDecodeError": "video_decode",
    "VideoShardDataModule": "video_shards",
    "collate_latents": "latent_samples",
    "collate_videos": "video_samples",
    "decode_video": "video_decode",
    "encode_latent_sample": "latent_samples",
    "make_demo": "demo",
    "precompute_latents": "precompute",
    "resize_center_crop": "video_decode",
    "sample_frame_indices": "video_decode",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what __getattr__ resolves, for type checkers (re-exports: F401 does not apply)
    from .demo import make_demo  # noqa: F401
    from .latent_samples import collate_latents, encode_latent_sample  # noqa: F401
    from .latent_shards import LatentShardDataModule  # noqa: F401
    from .manifest import CacheMismatchError  # noqa: F401
    from .precompute import PrecomputeSettings, precompute_latents  # noqa: F401
    from .sharding import BadSample, LoaderState, ResumableLoader, ShardStream  # noqa: F401
    from .skip_logger import SkippedSamplesLogger  # noqa: F401
    from .skipped import SkipCounter  # noqa: F401
    from .video_decode import VideoDecodeError, decode_video, resize_center_crop, sample_frame_indices  # noqa: F401
    from .video_samples import collate_videos  # noqa: F401
    from .video_shards import VideoShardDataModule  # noqa: F401
