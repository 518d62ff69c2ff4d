"""Reading and writing WebDataset tar shards.

Reading goes through webdataset's URL handling (brace patterns, `::` lists, `pipe:` commands,
local paths) and groups tar members by key the way WebDataset does, so our shards stay plain
WebDataset shards that any other tool can read. Writing is our own so that shards are byte-for-byte
deterministic (fixed mtime/owner) and appear atomically (a crashed write never looks finished).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

RawSample = dict[str, Any]


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Expand brace patterns and `::`-joined lists into a flat list of shard URLs."""
    if isinstance(urls, str):
        urls = [urls]
    out: list[str] = []
    for url in urls:
        out.extend(expand_urls(str(url)))
    if not out:
        raise ValueError(f"no shards in {urls!r}")
    return out


def is_local(url: str) -> bool:
    """True for plain file paths (no `pipe:` command, no `scheme://`)."""
    return not url.startswith("pipe:") and "://" not in url


def check_local_shards(urls: Sequence[str]) -> None:
    """Fail early, naming the path, when a local shard does not exist."""
    missing = [u for u in urls if is_local(u) and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard not found: {missing[0]}{more}")


def iter_tar_samples(url: str) -> Iterator[RawSample]:
    """Yield `{"__key__", "__url__", ext: bytes, ...}` for consecutive members sharing a key.

    A truncated or corrupt tar raises (tarfile.TarError, EOFError, OSError) after the samples read
    so far; the caller decides whether that is fatal.
    """
    stream = gopen(url, "rb")
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            current: RawSample | None = None
            for member in tar:
                if not member.isfile():
                    continue
                prefix, suffix = base_plus_ext(member.name)
                if prefix is None or suffix is None:
                    continue
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if current is None or current["__key__"] != prefix:
                    if current is not None:
                        yield current
                    current = {"__key__": prefix, "__url__": url}
                current[suffix.lower()] = data
            if current is not None:
                yield current
    finally:
        stream.close()


def count_tar_samples(path: str) -> int:
    """Number of distinct keys in a local tar, read from headers only (cheap)."""
    keys = set()
    with tarfile.open(path, mode="r:*") as tar:
        for member in tar:
            if member.isfile():
                prefix, _ = base_plus_ext(member.name)
                if prefix is not None:
                    keys.add(prefix)
    return len(keys)


def write_tar(path: str | os.PathLike, samples: Iterable[dict[str, bytes | str]]) -> int:
    """Write samples `{"__key__": k, ext: bytes|str}` to `path` atomically; returns the count.

    Members are written in the given order with mtime 0 and no owner, so the same samples give the
    same bytes. The file appears under its final name only once complete.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for sample in samples:
                key = sample["__key__"]
                if not isinstance(key, str) or not key or "." in key.rsplit("/", 1)[-1]:
                    raise ValueError(f"sample key must be a non-empty str with no '.' in its last part, got {key!r}")
                for ext, value in sample.items():
                    if ext.startswith("__"):
                        continue
                    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
                count += 1
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count
