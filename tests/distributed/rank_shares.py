"""The training data module of the 2-process DDP helper scripts (``ddp_*_run.py``): each rank's
share of a small in-memory data set, in order, with the data modules' DDP sampler settings
(``DistributedSampler``, last partial batch dropped)."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class RankShares(pl.LightningDataModule):
    """``dataset`` split over the trainer's processes without shuffling, in batches of
    ``batch_size(world_size)``."""

    def __init__(self, dataset: Dataset, batch_size: Callable[[int], int]) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = None
        if world > 1:
            sampler = DistributedSampler(self.dataset, world, rank, shuffle=False, drop_last=True)
        batch = self.batch_size(world)
        return DataLoader(self.dataset, batch_size=batch, sampler=sampler, drop_last=True)
