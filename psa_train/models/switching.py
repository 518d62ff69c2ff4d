"""Turning a patched model's PSA processors off for a while (the dense teacher pass)."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator


@contextlib.contextmanager
def processors_disabled(processors: Iterable) -> Iterator[None]:
    """Set `enabled = False` on every processor inside the block, then restore each flag."""
    processors = list(processors)
    previous = [p.enabled for p in processors]
    for p in processors:
        p.enabled = False
    try:
        yield
    finally:
        for p, flag in zip(processors, previous):
            p.enabled = flag
