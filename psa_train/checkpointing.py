"""Crash-safe checkpoint writing: a checkpoint interrupted while being written never replaces
the last good one.

What Lightning 2.6 does by itself (`lightning/fabric/utilities/cloud_io.py: _atomic_save`):
`TorchCheckpointIO` serialises the whole checkpoint into an in-memory buffer, then writes it
through an fsspec transaction, which for local paths writes a temp file made by
`tempfile.mkstemp()` (in the system temp folder, e.g. /tmp) and `shutil.move`s it over the
target. That is atomic only when /tmp and the checkpoint folder share a filesystem (otherwise
the move is a copy that a crash can cut short, leaving a truncated `last.ckpt`), never fsyncs,
and holds the checkpoint twice in memory. `DeepSpeedStrategy` writes its sharded checkpoint
straight into the target folder (`engine.save_checkpoint(path, tag="checkpoint")`), so a crash
while re-saving `last.ckpt` leaves a half-old, half-new folder.

Here:
- `AtomicCheckpointIO` (single-file checkpoints): streams `torch.save` into a temp file in the
  target's own folder, fsyncs it, `os.replace`s it over the target and fsyncs the folder.
- `AtomicDeepSpeedStrategy` (sharded checkpoints): all ranks write into a fresh hidden folder
  next to the target; only when every rank has finished does rank 0 point the target name at it
  with an atomic symlink swap (`os.replace` of a new link), then delete the previous version. The
  target is always either the complete old or the complete new checkpoint.

Use them in a recipe:  trainer.plugins: [psa_train.checkpointing.AtomicCheckpointIO]  or
trainer.strategy.class_path: psa_train.checkpointing.AtomicDeepSpeedStrategy.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy

__all__ = [
    "AtomicCheckpointIO",
    "AtomicDeepSpeedStrategy",
    "atomic_torch_save",
    "publish_directory",
    "remove_published",
]


def _is_local(path: Any) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _serialize(obj: Any, f: Any) -> None:
    torch.save(obj, f)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save(obj, path)` such that `path` is either untouched or the complete new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            _serialize(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` whose local writes are atomic (temp file in the same folder + rename)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


# ---------------------------------------------------------------------------------------------
# Folders (sharded DeepSpeed checkpoints)
# ---------------------------------------------------------------------------------------------


def staging_directory(final: str | os.PathLike) -> Path:
    """A fresh hidden folder beside `final` to write a new version of it into."""
    final = Path(final)
    return final.parent / f".{final.name}.v-{uuid.uuid4().hex[:12]}"


def _versions(final: Path) -> list[Path]:
    prefix = f".{final.name}.v-"
    if not final.parent.is_dir():
        return []
    return [p for p in final.parent.iterdir() if p.name.startswith(prefix)]


def publish_directory(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Make `final` (a symlink) point at the complete folder `staging`, atomically.

    The previous version (and any leftover of an interrupted save) is deleted afterwards. If
    `final` is a real folder (not made here), it is moved aside first and deleted at the end.
    """
    staging, final = Path(staging), Path(final)
    legacy = None
    if final.exists() and not final.is_symlink():
        if final.is_dir():
            legacy = final.parent / f".{final.name}.legacy-{uuid.uuid4().hex[:8]}"
            os.rename(final, legacy)
        else:
            final.unlink()
    link_tmp = final.parent / f".{final.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(staging.name, link_tmp)  # relative: the run folder can be moved
    os.replace(link_tmp, final)
    _fsync_dir(final.parent)
    for old in _versions(final):
        if old.name != staging.name:
            shutil.rmtree(old, ignore_errors=True)
    if legacy is not None:
        shutil.rmtree(legacy, ignore_errors=True)


def remove_published(final: str | os.PathLike) -> None:
    """Delete a checkpoint written by `publish_directory` (the link and what it points to)."""
    final = Path(final)
    if final.is_symlink():
        target = final.parent / os.readlink(final)
        final.unlink()
        shutil.rmtree(target, ignore_errors=True)
    elif final.is_dir():
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's `DeepSpeedStrategy` with crash-safe sharded checkpoints (see module doc).

    Accepts every argument of `DeepSpeedStrategy` (e.g. `stage`, `config` as a path to a
    DeepSpeed JSON file or a dict). The checkpoint folder must be on a filesystem all ranks share.
    """

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Optional[Any] = None) -> None:
        filepath = self.broadcast(str(filepath))
        if not _is_local(filepath):
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        staging = self.broadcast(str(staging_directory(filepath)) if self.is_global_zero else None)
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("psa_train_checkpoint_written")
        if self.is_global_zero:
            publish_directory(staging, filepath)
        self.barrier("psa_train_checkpoint_published")

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            if _is_local(filepath):
                remove_published(filepath)
            else:  # pragma: no cover
                get_filesystem(filepath).rm(filepath, recursive=True)
