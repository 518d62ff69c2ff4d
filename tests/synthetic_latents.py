"""A tiny in-memory LightningDataModule with the demo data's batch shapes, for fast tests.

Batches: {"latents": [B, 16, 5, 8, 8], "text_embeds": [B, 32, 32], "text_mask": [B, 32]}. The
training stream is an IterableDataset split over ranks, in an order keyed on (seed, epoch);
its loader is resumable (Lightning saves its `state_dict` in checkpoints), so a resumed run
sees exactly the batches the uninterrupted run saw.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset


def _clips(n: int, seed: int, frames: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(n, 16, frames, size, size, generator=g)
    text = torch.randn(n, 32, 32, generator=g)
    lengths = torch.randint(4, 33, (n,), generator=g)
    mask = (torch.arange(32)[None] < lengths[:, None]).long()
    return [{"latents": latents[i], "text_embeds": text[i], "text_mask": mask[i]} for i in range(n)]


class _List(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class _Stream(IterableDataset):
    def __init__(self, items, seed: int, batch_size: int, datamodule):
        self.items, self.seed, self.batch_size, self.dm = items, seed, batch_size, datamodule
        self.skip_batches = 0

    def batches_per_epoch(self) -> int:
        _, world = _dist_info()
        return len(self.items) // world // self.batch_size

    def __iter__(self):
        rank, world = _dist_info()
        trainer = self.dm.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        order = torch.randperm(len(self.items), generator=torch.Generator().manual_seed(self.seed + epoch))
        mine = order[rank::world].tolist()[: self.batches_per_epoch() * self.batch_size]
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        for i in mine[start:]:
            yield self.items[i]


class _ResumableLoader(DataLoader):
    def state_dict(self):
        trainer = self.dataset.dm.trainer
        return {"batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed if trainer else 0}

    def load_state_dict(self, state):
        batches = int(state["batches"])
        self.dataset.skip_batches = batches if batches < self.dataset.batches_per_epoch() else 0


class SyntheticLatents(pl.LightningDataModule):
    def __init__(self, num_samples: int = 16, batch_size: int = 2, seed: int = 0, frames: int = 5, size: int = 8):
        super().__init__()
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.frames, self.size = frames, size

    def setup(self, stage=None):
        self.train_items = _clips(self.num_samples, self.seed, self.frames, self.size)
        self.val_items = _clips(4, self.seed + 1, self.frames, self.size)

    def train_dataloader(self):
        stream = _Stream(self.train_items, self.seed, self.batch_size, self)
        return _ResumableLoader(stream, batch_size=self.batch_size)

    def val_dataloader(self):
        return DataLoader(_List(self.val_items), batch_size=self.batch_size)

    test_dataloader = predict_dataloader = val_dataloader
