"""Counting and reporting samples that had to be skipped (undecodable, truncated, too short).

A bad sample must never stop training, but it must not vanish silently either: it is warned
about once per file (per process) and counted. DataLoader workers are separate processes, so the
count lives in a small shared-memory tensor with one slot per worker (no locking needed); the main
process reads the sum (`psa_train.data.SkippedSamplesLogger` puts it into the Lightning logger).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger("psa_train.data")
_warned: set[str] = set()


def warn_once(source: str, reason: str) -> None:
    """Log a warning about `source` (a file, or shard:key) the first time this process sees it."""
    if source in _warned:
        return
    _warned.add(source)
    log.warning("skipping %s: %s", source, reason)


class SkipCounter:
    """Skipped-sample count shared between DataLoader workers and the main process."""

    def __init__(self, slots: int = 1) -> None:
        self._counts = torch.zeros(max(1, slots), dtype=torch.int64).share_memory_()

    def add(self, n: int = 1) -> None:
        info = get_worker_info()
        slot = 0 if info is None else info.id % self._counts.numel()
        self._counts[slot] += n

    @property
    def value(self) -> int:
        return int(self._counts.sum())

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"SkipCounter({self.value})"
