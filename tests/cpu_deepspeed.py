"""Lightning's DeepSpeed strategy on CPU processes (gloo), for tests only.

Lightning refuses DeepSpeed without CUDA (`DeepSpeedStrategy.setup_environment`). This subclass
skips that check, selects DeepSpeed's CPU accelerator (`DS_ACCELERATOR=cpu`, set before
deepspeed is imported) and initialises torch.distributed with gloo. It inherits the crash-safe
checkpoint writing of `psa_train.checkpointing.AtomicDeepSpeedStrategy`.

Use:  --trainer.accelerator cpu --trainer.devices 2
      --trainer.strategy cpu_deepspeed.CPUDeepSpeedStrategy --trainer.strategy.stage 2
(with this folder on PYTHONPATH).
"""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from lightning.pytorch.strategies.ddp import DDPStrategy  # noqa: E402

from psa_train.checkpointing import AtomicDeepSpeedStrategy  # noqa: E402


class CPUDeepSpeedStrategy(AtomicDeepSpeedStrategy):
    strategy_name = "deepspeed_cpu"

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(*args, **kwargs)

    def setup_environment(self) -> None:
        # DeepSpeedStrategy.setup_environment only adds the CUDA check on top of DDP's.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # DeepSpeedStrategy.setup_distributed minus the CUDA device-index check.
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        # Lightning passes device_rank=root_device.index, which is None on CPU.
        import argparse

        import deepspeed

        parameters = filter(lambda p: p.requires_grad, model.parameters())
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=parameters,
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, ds_optimizer

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu")

    def _get_process_group_backend(self) -> str:
        return "gloo"
