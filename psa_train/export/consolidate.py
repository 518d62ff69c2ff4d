"""Read a training checkpoint into one full state dict plus its run information.

Two kinds of checkpoints come out of `psa-train fit`:

- a Lightning checkpoint file (`step=20.ckpt`, `last.ckpt`): one `torch.save`d dict with
  `state_dict`, `hyper_parameters`, `global_step`, ... and our `psa_train` entry;
- a DeepSpeed checkpoint folder (ZeRO-2/3, `last.ckpt/` or a symlink to it): per-rank shards of
  the parameters and optimizer states under a tag folder (Lightning's tag is `checkpoint`), plus
  rank 0's `*model_states.pt` that carries Lightning's own entries (hyper_parameters,
  global_step, psa_train, ...) as DeepSpeed "client state".

`load_training_checkpoint` returns both as a `TrainingCheckpoint` whose `state_dict` is the
LightningModule's full (unsharded) state dict, without the `_forward_module.` prefix of
DeepSpeed's wrapper.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# DeepSpeed's own entries of the model-states file (not Lightning's client state).
_DEEPSPEED_KEYS = (
    "module", "buffer_names", "optimizer", "lr_scheduler", "param_shapes", "frozen_param_shapes",
    "frozen_param_fragments", "shared_params", "sparse_tensor_module_names", "csr_tensor_module_names",
    "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config",
    "ds_version", "data_sampler", "random_ltd", "ds_autotp_config",
)
_WRAPPER_PREFIX = "_forward_module."


class CheckpointError(ValueError):
    """A checkpoint path that is missing or not a checkpoint psa-train can read."""


@dataclass
class TrainingCheckpoint:
    """The pieces of a training checkpoint the export needs."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    psa_train: dict[str, Any] = field(default_factory=dict)  # {psa_config, budget, density, trainable}
    global_step: int | None = None
    epoch: int | None = None
    kind: str = "lightning"  # "lightning" | "deepspeed"
    zero_stage: int | None = None


def _torch_load_own_file(path: str | os.PathLike) -> Any:
    """Load a pickled file that the user's own training run wrote.

    `weights_only=True` first (it refuses anything but tensors and plain containers). Lightning
    checkpoints and DeepSpeed's model-states files may also hold other picklable objects
    (optimizer or loop states, argparse namespaces); those are files the user made themselves,
    so falling back to a full unpickle is acceptable for them, and only for them.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError):
            # The user's own training checkpoint (see the docstring): full unpickle accepted.
            return torch.load(path, map_location="cpu", weights_only=False)


def is_deepspeed_checkpoint(path: str | os.PathLike) -> bool:
    """A folder with DeepSpeed's `latest` file or a tag folder holding `*model_states.pt`."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "latest").is_file():
        return True
    return any(child.is_dir() and any(child.glob("*model_states.pt")) for child in p.iterdir())


def _deepspeed_tag(path: Path) -> str:
    latest = path / "latest"
    if latest.is_file():
        return latest.read_text().strip()
    tags = [c.name for c in path.iterdir() if c.is_dir() and any(c.glob("*model_states.pt"))]
    if len(tags) != 1:
        raise CheckpointError(f"{path}: no 'latest' file and {len(tags)} tag folders {sorted(tags)}; cannot tell which to read")
    return tags[0]


def _strip_wrapper(state: dict[str, Any]) -> dict[str, Any]:
    return {k[len(_WRAPPER_PREFIX):] if k.startswith(_WRAPPER_PREFIX) else k: v for k, v in state.items()}


def consolidate_deepspeed(
    path: str | os.PathLike, tag: str | None = None, prefixes: tuple[str, ...] | None = None
) -> TrainingCheckpoint:
    """Merge a DeepSpeed ZeRO-2/3 checkpoint folder into one float32 state dict on the CPU.

    Uses DeepSpeed's own `zero_to_fp32` (frozen parameters included, as they were saved).
    prefixes: keep only the entries whose names start with one of these (None: all).
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # no GPU needed to merge shards
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint, get_model_state_files

    root = Path(path).resolve()  # Lightning's last.ckpt is a symlink to a hidden version folder
    tag = tag or _deepspeed_tag(root)
    ds_dir = root / tag
    if not ds_dir.is_dir():
        raise CheckpointError(f"{root}: tag folder {tag!r} does not exist")
    # Lazy: shards are read once, and only the entries kept are materialised (a full-mode
    # run's frozen teacher, when DeepSpeed saved it, is never built).
    lazy = _strip_wrapper(get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag, lazy_mode=True))
    state: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}  # tied parameters stay tied
    for name, value in lazy.items():
        if prefixes is not None and not name.startswith(tuple(prefixes)):
            continue
        if id(value) not in done:
            done[id(value)] = value if isinstance(value, torch.Tensor) else value.contiguous()
        state[name] = done[id(value)]

    # Lightning's client state lives in rank 0's model-states file (the user's own file).
    model_files = get_model_state_files(str(ds_dir))
    names = {os.path.basename(f): f for f in model_files}
    rank0 = names.get("zero_pp_rank_0_mp_rank_00_model_states.pt") or names.get("mp_rank_00_model_states.pt") or model_files[0]
    client = _torch_load_own_file(rank0)
    zero_stage = None
    try:
        zero_stage = int(client.get("ds_config", {}).get("zero_optimization", {}).get("stage"))
    except (TypeError, ValueError, AttributeError):
        pass
    client = {k: v for k, v in client.items() if k not in _DEEPSPEED_KEYS}
    return TrainingCheckpoint(
        path=Path(path),
        state_dict=state,
        hyper_parameters=dict(client.get("hyper_parameters") or {}),
        psa_train=dict(client.get("psa_train") or {}),
        global_step=client.get("global_step"),
        epoch=client.get("epoch"),
        kind="deepspeed",
        zero_stage=zero_stage,
    )


def load_training_checkpoint(path: str | os.PathLike, prefixes: tuple[str, ...] | None = None) -> TrainingCheckpoint:
    """A Lightning checkpoint file or a DeepSpeed checkpoint folder as a `TrainingCheckpoint`.

    prefixes: keep only the state-dict entries under these prefixes (None: all).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if p.is_dir():
        if not is_deepspeed_checkpoint(p):
            raise CheckpointError(f"{p} is a folder but not a DeepSpeed checkpoint (no 'latest' file or *model_states.pt)")
        return consolidate_deepspeed(p, prefixes=prefixes)
    ckpt = _torch_load_own_file(p)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{p} is not a Lightning checkpoint (no 'state_dict' entry)")
    return TrainingCheckpoint(
        path=p,
        state_dict={k: v for k, v in _strip_wrapper(dict(ckpt["state_dict"])).items()
                    if prefixes is None or k.startswith(tuple(prefixes))},
        hyper_parameters=dict(ckpt.get("hyper_parameters") or {}),
        psa_train=dict(ckpt.get("psa_train") or {}),
        global_step=ckpt.get("global_step"),
        epoch=ckpt.get("epoch"),
        kind="lightning",
    )


def submodule_state(state_dict: dict[str, torch.Tensor], prefix: str = "student.") -> dict[str, torch.Tensor]:
    """The entries under `prefix` (e.g. the student's), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
