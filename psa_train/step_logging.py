"""Logging numbers from a training step without making the step wait for the GPU."""

from __future__ import annotations

import torch

from .attention import mean_density


def on_device(value: float, module: torch.nn.Module) -> torch.Tensor:
    """A Python number as a 0-d float32 tensor filled on the LightningModule's device.

    `LightningModule.log` turns a number into a tensor with `torch.tensor(value, device=...)`: a
    copy from pageable host memory, which waits until the GPU has finished its queue. In a training
    step that idles the GPU while the host catches up (at short sequences, where the host's launches
    are the bound, a few percent of the step); a fill is queued like any other kernel.
    """
    return torch.full((), float(value), dtype=torch.float32, device=module.device)


def log_psa(module, prefix: str, batch_size: int, budget: float | None, layers) -> None:
    """Log the sparsity budget and the PSA layers' mean density under `prefix` ("train": per step
    and on the progress bar; "val"/"test": per epoch, reduced across processes)."""
    step = prefix == "train"
    kwargs = dict(on_step=step, on_epoch=not step, batch_size=batch_size, sync_dist=not step)
    if budget is not None:
        module.log(f"{prefix}/budget", on_device(budget, module), **kwargs)
    density = mean_density(layers)
    if density is not None:
        module.log(f"{prefix}/density", density, prog_bar=step, **kwargs)
