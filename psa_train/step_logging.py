"""Logging numbers from a training step without making the step wait for the GPU."""

from __future__ import annotations

import torch


def on_device(value: float, module: torch.nn.Module) -> torch.Tensor:
    """A Python number as a 0-d float32 tensor filled on the LightningModule's device.

    `LightningModule.log` turns a number into a tensor with `torch.tensor(value, device=...)`: a
    copy from pageable host memory, which waits until the GPU has finished its queue. In a training
    step that idles the GPU while the host catches up (at short sequences, where the host's launches
    are the bound, a few percent of the step); a fill is queued like any other kernel.
    """
    return torch.full((), float(value), dtype=torch.float32, device=module.device)
