"""LightningDataModule over raw WebDataset video shards (`{key}.mp4` + `{key}.txt|json`).

For training directly on pixels; `psa-train data precompute` reads shards with the same
sample decoder (`video_samples`).
Batches: see `video_samples`. Bad videos are skipped and counted (`datamodule.skipped`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import ShardDataModule
from .video_samples import VideoSampleDecoder, collate_videos


class VideoShardDataModule(ShardDataModule):
    """Video clips from WebDataset shards, decoded with decord.

    Args:
        train_shards / val_shards / test_shards: local paths, brace patterns
            (`shard-{000000..000009}.tar`), `::`-joined lists or `pipe:` URLs; `test` and
            `predict` read test_shards, else val_shards.
        num_frames, height, width: clip size after resize + centre crop.
        fps: target frame rate (frames resampled from the native rate); None uses `frame_stride`.
        frame_stride: take every n-th frame when `fps` is None.
        shuffle_buffer: samples held for shuffling (training only); 0 or 1 disables.
        seed: seeds shard order, shuffle buffer and random starts (per epoch).
        split: "auto", "shard" or "sample" (see psa_train.data.sharding).
        label_key: when set, batches carry `"label"` (LongTensor [B]) from each sample's
            `{key}.<label_key>` member (e.g. "cls") or that field of its json (e.g. the demo's
            "shape" or "motion"); samples without it are skipped and counted.
    """

    collate_fn = staticmethod(collate_videos)

    def __init__(
        self,
        train_shards: str | Sequence[str] | None = None,
        val_shards: str | Sequence[str] | None = None,
        test_shards: str | Sequence[str] | None = None,
        num_frames: int = 17,
        height: int = 64,
        width: int = 64,
        fps: float | None = None,
        frame_stride: int = 1,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 64,
        seed: int = 0,
        split: str = "auto",
        drop_last: bool = True,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        label_key: str | None = None,
    ) -> None:
        super().__init__(
            train_shards,
            val_shards,
            batch_size=batch_size,
            val_batch_size=val_batch_size,
            num_workers=num_workers,
            shuffle_buffer=shuffle_buffer,
            seed=seed,
            split=split,
            drop_last=drop_last,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            prefetch_factor=prefetch_factor,
            test_shards=test_shards,
        )
        self.save_hyperparameters()
        self.num_frames, self.height, self.width = num_frames, height, width
        self.fps, self.frame_stride = fps, frame_stride
        self.label_key = label_key

    def decoder(self, train: bool) -> VideoSampleDecoder:
        return VideoSampleDecoder(
            self.num_frames,
            self.height,
            self.width,
            fps=self.fps,
            frame_stride=self.frame_stride,
            train=train,
            seed=self.seed,
            label_key=self.label_key,
        )
