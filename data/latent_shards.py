"""LightningDataModule over precomputed latent shards: what the distillation module trains on.

Sample format and batch layout: see `latent_samples`. Epoch order is a function of `seed` only,
and training resumes exactly mid-epoch (see `sharding`): sample counts come from the cache's
manifest, so every rank and worker gets the same number of samples and
`len(train_dataloader())` is exact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .base import ShardDataModule
from .latent_samples import LatentSampleDecoder, collate_latents
from .manifest import check_settings, read_manifest
from .tario import is_local


class LatentShardDataModule(ShardDataModule):
    """Latents + text embeddings from shards written by `psa-train data precompute`.

    Args:
        train_shards / val_shards / test_shards: local paths, brace patterns, `::` lists or
            `pipe:` URLs; `test` and `predict` read test_shards, else val_shards.
        model_id: the Wan model (hub id or path) the latents must come from; read by
            `psa-train data precompute --config` and checked against the cache's manifest.
        precompute: settings the cache must have been made with (`num_frames`, `height`,
            `width`, `fps`, `frame_stride`, `text_max_length`, ...); also read by precompute and
            checked against the manifest in `setup()`.
        shuffle_buffer, seed, split: as for VideoShardDataModule; order depends on `seed` only.
    """

    collate_fn = staticmethod(collate_latents)

    def __init__(
        self,
        train_shards: str | Sequence[str] | None = None,
        val_shards: str | Sequence[str] | None = None,
        test_shards: str | Sequence[str] | None = None,
        model_id: str | None = None,
        precompute: dict | None = None,
        batch_size: int = 1,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        seed: int = 0,
        split: str = "auto",
        drop_last: bool = True,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
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
        self.model_id, self.precompute = model_id, dict(precompute or {})

    def decoder(self, train: bool) -> LatentSampleDecoder:
        return LatentSampleDecoder()

    def _manifests(self, shards: list[str]) -> dict[str, dict | None]:
        dirs = {os.path.dirname(os.path.abspath(s)) for s in shards if is_local(s)}
        return {d: read_manifest(d) for d in sorted(dirs)}

    def shard_counts(self, shards: list[str]) -> list[int] | None:
        """Counts from the manifest next to the shards, else from tar headers."""
        if not all(is_local(s) for s in shards):
            return None
        manifests = self._manifests(shards)
        counts = []
        for s in shards:
            m = manifests[os.path.dirname(os.path.abspath(s))]
            entry = (m or {}).get("shards", {}).get(os.path.basename(s))
            if entry is None:
                return super().shard_counts(shards)
            counts.append(int(entry["samples"]))
        return counts

    def setup(self, stage: str | None = None) -> None:
        """Refuse a cache made from another model or with other settings than the recipe's."""
        wanted = dict(self.precompute)
        if self.model_id is not None:
            wanted["model_id"] = self.model_id
        if not wanted:
            return
        for shards in (self.train_shards, self.val_shards, self.test_shards):
            for directory, manifest in self._manifests(shards or []).items():
                if manifest is not None:
                    check_settings(
                        manifest["settings"],
                        wanted,
                        directory,
                        "Re-run `psa-train data precompute --overwrite` or point the recipe at the right cache.",
                    )
