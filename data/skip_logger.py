"""A Lightning callback that logs how many bad samples the DataModule has skipped."""

from __future__ import annotations

import lightning as L


class SkippedSamplesLogger(L.Callback):
    """Logs `trainer.datamodule.skipped` (this rank's count) as `data/skipped_samples`.

    Add it to the trainer's callbacks in a recipe::

        trainer:
          callbacks:
            - class_path: psa_train.data.SkippedSamplesLogger
    """

    def __init__(self, name: str = "data/skipped_samples") -> None:
        self.name = name

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        skipped = getattr(trainer.datamodule, "skipped", None)
        if skipped is not None:
            pl_module.log(self.name, float(skipped), on_step=True, on_epoch=False, prog_bar=False)
