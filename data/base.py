"""Plumbing shared by the shard DataModules: loaders, resume state, skipped-sample counts.

Subclasses say how to decode one raw sample (`decoder`) and how to collate (`collate_fn`); this
class builds the split/shuffled/resumable loaders (see `sharding`) for train, validation, test
and predict (test and predict read `test_shards`, falling back to `val_shards`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L

from .sharding import LoaderState, ShardStream, make_loader
from .skipped import SkipCounter
from .tario import RawSample, check_local_shards, count_tar_samples, expand_shards, is_local


class ShardDataModule(L.LightningDataModule):
    """Base class; see VideoShardDataModule and LatentShardDataModule.

    `skipped` is the number of samples this rank skipped so far (all loaders it made); log it with
    `psa_train.data.SkippedSamplesLogger` or `self.log("data/skipped", trainer.datamodule.skipped)`.
    The training position (epoch, batches handed out in it) lives here and is shared by every
    train loader this module makes, so it survives `reload_dataloaders_every_n_epochs`; Lightning
    checkpoints it through both this module's and the loader's `state_dict`, and on resume the
    loader skips what was consumed (exactly for latent shards, see `sharding`).
    """

    def __init__(
        self,
        train_shards: str | Sequence[str] | None,
        val_shards: str | Sequence[str] | None,
        *,
        batch_size: int,
        val_batch_size: int | None,
        num_workers: int,
        shuffle_buffer: int,
        seed: int,
        split: str,
        drop_last: bool,
        pin_memory: bool,
        persistent_workers: bool,
        prefetch_factor: int | None,
        test_shards: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.train_shards = None if train_shards is None else expand_shards(train_shards)
        self.val_shards = None if val_shards is None else expand_shards(val_shards)
        self.test_shards = None if test_shards is None else expand_shards(test_shards)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.shuffle_buffer, self.seed, self.split = num_workers, shuffle_buffer, seed, split
        self.drop_last, self.pin_memory = drop_last, pin_memory
        self.persistent_workers, self.prefetch_factor = persistent_workers, prefetch_factor
        self.train_state = LoaderState()
        self._counters: list[SkipCounter] = []

    # -- to be provided by subclasses -------------------------------------------------------
    def decoder(self, train: bool) -> Callable[[RawSample, int], dict]:
        raise NotImplementedError

    # a module-level function (stays picklable for spawned workers), wrapped in staticmethod
    collate_fn: Callable[[list[dict]], dict]

    def shard_counts(self, shards: list[str]) -> list[int] | None:
        """Samples per shard, read from tar headers when every shard is a local file."""
        if not all(is_local(s) for s in shards):
            return None
        return [count_tar_samples(s) for s in shards]

    # -- shared ------------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        return sum(c.value for c in self._counters)

    def make_stream(self, shards: list[str], train: bool, **overrides) -> ShardStream:
        check_local_shards(shards)
        counter = SkipCounter(max(1, self.num_workers))
        self._counters.append(counter)
        return ShardStream(
            shards,
            self.decoder(train),
            shuffle=train,
            buffer_size=self.shuffle_buffer,
            seed=self.seed,
            split=self.split,
            counts=self.shard_counts(shards),
            skipped=counter,
            **overrides,
        )

    def _loader(self, shards: list[str] | None, train: bool):
        if shards is None:
            return []
        return make_loader(
            self.make_stream(shards, train),
            state=self.train_state if train else LoaderState(),
            batch_size=self.batch_size if train else self.val_batch_size,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            drop_last=self.drop_last if train else False,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            prefetch_factor=self.prefetch_factor,
        )

    def state_dict(self) -> dict[str, int]:
        """Training position, also saved by the train loader; restoring either one is enough."""
        return {"epoch": self.train_state.epoch, "batches": self.train_state.batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.train_state.epoch = int(state_dict.get("epoch", 0))
        self.train_state.batches = int(state_dict.get("batches", 0))

    def train_dataloader(self):
        if self.train_shards is None:
            raise ValueError("train_shards is not set")
        return self._loader(self.train_shards, train=True)

    def val_dataloader(self):
        return self._loader(self.val_shards, train=False)

    def test_dataloader(self):
        return self._loader(self._held_out_shards("test"), train=False)

    def predict_dataloader(self):
        return self._loader(self._held_out_shards("predict"), train=False)

    def _held_out_shards(self, stage: str) -> list[str]:
        """`test_shards`, else `val_shards`: held-out data for `psa-train test` / `predict`."""
        shards = self.test_shards or self.val_shards
        if shards is None:
            raise ValueError(f"`{stage}` needs held-out data: set data.init_args.test_shards (or val_shards)")
        return shards
