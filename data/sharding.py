"""Splitting shards over nodes and workers, shuffling, and a DataLoader that can resume mid-epoch.

Every DataLoader worker of every rank is one *consumer*. All consumers compute the same epoch
plan from (seed, epoch): a shuffled shard order, then either

- ``shard`` split: consumer c reads shards c, c + n, c + 2n, ... of that order, or
- ``sample`` split: every consumer reads all shards and keeps samples i with i % n == c, which is
  what makes fewer shards than consumers work (nothing hangs, nothing is seen twice).

``auto`` takes ``shard`` when shards divide evenly over consumers or there are at least 10 per
consumer, else ``sample``. When per-shard sample counts are known (a manifest, or local tars),
every consumer is cut to the same number of samples (``equalize``), so all ranks see the same
number of batches (DDP never waits on a rank that ran dry) and the DataLoader length is exact.

Resume: :class:`ResumableLoader` counts the batches it handed out in this epoch (Lightning saves
its ``state_dict`` in checkpoints and restores it). With equal consumers, PyTorch's DataLoader
takes batch k from worker k % W, so after N batches each worker knows how many samples it already
produced; it skips them (before decoding), and workers rotate roles so that the next batch is
batch N. That is exact for equalized data with ``drop_last`` (the latent shards). Otherwise it
is approximate: without a known length Lightning prefetches one batch, which a resume then skips,
and bad samples or uneven workers shift which worker delivers which batch near the end.
"""

from __future__ import annotations

import itertools
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .skipped import SkipCounter, warn_once
from .tario import RawSample, iter_tar_samples

SPLIT_MODES = ("auto", "shard", "sample")


class BadSample(Exception):
    """Raised by a decode function for a sample that should be skipped and counted."""


def consumer_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int, int, int]:
    """(rank, world_size, worker id, num_workers) of the calling process."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            r, w = dist.get_rank(), dist.get_world_size()
        else:
            r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    info = get_worker_info()
    worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
    return rank, world_size, worker, num_workers


def choose_split(split: str, num_shards: int, num_consumers: int) -> str:
    """Resolve ``auto`` (and a ``shard`` request that would starve consumers) to a split mode."""
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    if split == "auto":
        even = num_shards % num_consumers == 0
        return "shard" if even or num_shards >= 10 * num_consumers else "sample"
    if split == "shard" and num_shards < num_consumers:
        return "sample"
    return split


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Streaming shuffle through a buffer of `size` items (size <= 1 passes items through)."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf


@dataclass
class LoaderState:
    """Position of a training loader: epoch and batches handed out in it."""

    epoch: int = 0
    batches: int = 0


class ShardStream(IterableDataset):
    """Samples from WebDataset shards, split over ranks and workers, shuffled, decoded.

    `decode(raw_sample, epoch)` turns a raw sample (bytes per extension) into the output dict or
    raises :class:`BadSample`; such samples are warned about once and counted in `skipped`.
    `counts` (samples per shard, same order as `shards`) enables `equalize`.
    `rank`/`world_size` override what torch.distributed reports (tests, tools).
    """

    def __init__(
        self,
        shards: Sequence[str],
        decode: Callable[[RawSample, int], dict],
        *,
        shuffle: bool = False,
        buffer_size: int = 0,
        seed: int = 0,
        split: str = "auto",
        counts: Sequence[int] | None = None,
        equalize: bool = True,
        batch_size: int = 1,
        skipped: SkipCounter | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not shards:
            raise ValueError("shards is empty")
        if counts is not None and len(counts) != len(shards):
            raise ValueError(f"counts has {len(counts)} entries for {len(shards)} shards")
        choose_split(split, 1, 1)  # validates the name
        self.shards, self.decode = list(shards), decode
        self.shuffle, self.buffer_size, self.seed, self.split = shuffle, buffer_size, seed, split
        self.counts = None if counts is None else [int(c) for c in counts]
        self.equalize, self.batch_size = equalize, batch_size
        self.skipped = skipped if skipped is not None else SkipCounter()
        self.rank, self.world_size = rank, world_size
        # [epoch, batches already consumed in it]; shared memory so persistent workers see updates
        self.control = torch.zeros(2, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self.control[0] = epoch

    def samples_per_consumer(self, world_size: int, num_workers: int) -> int | None:
        """Samples each consumer yields per epoch when equalized (None when unknown)."""
        if not self.equalize or self.counts is None:
            return None
        n = world_size * max(1, num_workers)
        if choose_split(self.split, len(self.shards), n) == "shard":
            # every consumer gets at least len // n shards: the smallest ones bound all epochs
            return sum(sorted(self.counts)[: len(self.shards) // n])
        return sum(self.counts) // n

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = consumer_info(self.rank, self.world_size)
        epoch, resumed = (int(v) for v in self.control.tolist())
        role = (worker + resumed) % workers  # keeps the round-robin order across a resume
        n, cid = world * workers, rank * workers + role
        order = list(range(len(self.shards)))
        if self.shuffle:
            random.Random(f"{self.seed}:{epoch}:shards").shuffle(order)
        mode = choose_split(self.split, len(order), n)
        if mode == "shard":
            raw = self._read(order[cid::n], stride=1, offset=0, report=True)
        else:
            raw = self._read(order, stride=n, offset=cid, report=cid == 0)
        limit = self.samples_per_consumer(world, workers)
        if limit is not None:
            raw = itertools.islice(raw, limit)
        if self.shuffle:
            raw = shuffle_buffer(raw, self.buffer_size, random.Random(f"{self.seed}:{epoch}:{cid}"))
        done = resumed // workers + (1 if role < resumed % workers else 0)
        raw = itertools.islice(raw, done * self.batch_size, None)
        for sample in raw:
            try:
                yield self.decode(sample, epoch)
            except BadSample as err:
                self.skipped.add()
                warn_once(f"{sample['__url__']}:{sample['__key__']}", str(err))

    def _read(self, shard_ids: list[int], stride: int, offset: int, report: bool) -> Iterator[RawSample]:
        index = 0
        for i in shard_ids:
            url = self.shards[i]
            try:
                for sample in iter_tar_samples(url):
                    if index % stride == offset:
                        yield sample
                    index += 1
            except (tarfile.TarError, EOFError, OSError) as err:
                if report:
                    self.skipped.add()
                    warn_once(url, f"unreadable shard ({type(err).__name__}: {err}); rest of it skipped")


class ResumableLoader(DataLoader):
    """DataLoader over a :class:`ShardStream` that knows its epoch and position.

    Each iteration is one epoch; the position is saved by Lightning (this loader implements
    `state_dict`/`load_state_dict`), and an abandoned iteration continues where it stopped.
    `length` (batches per epoch on this rank) makes `len()` exact when known.
    """

    def __init__(self, dataset: ShardStream, *, state: LoaderState, length: int | None = None, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.state, self._length = state, length

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("the number of batches is unknown (no sample counts for these shards)")
        return self._length

    def __iter__(self) -> Iterator[Any]:
        state, stream = self.state, self.dataset
        stream.control[0], stream.control[1] = state.epoch, state.batches  # type: ignore[attr-defined]
        for batch in super().__iter__():
            state.batches += 1
            yield batch
        state.epoch, state.batches = state.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "batches": self.state.batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.state.epoch, self.state.batches = int(state_dict["epoch"]), int(state_dict["batches"])


def make_loader(
    stream: ShardStream,
    *,
    state: LoaderState,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable,
    drop_last: bool,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
) -> ResumableLoader:
    """A ResumableLoader whose length is exact when the stream knows its sample counts."""
    _, world, _, _ = consumer_info(stream.rank, stream.world_size)
    stream.batch_size = batch_size
    per = stream.samples_per_consumer(world, num_workers)
    length = None
    if per is not None:
        per_worker = per // batch_size if drop_last else -(-per // batch_size)
        length = max(1, num_workers) * per_worker
        if length == 0 and per * max(1, num_workers) * world > 0:
            raise ValueError(
                f"each of the {world * max(1, num_workers)} data consumers (ranks x workers) gets {per} samples, "
                f"fewer than batch_size={batch_size}: use fewer workers, a smaller batch or more data"
            )
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return ResumableLoader(
        stream,
        state=state,
        length=length,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        **extra,
    )
