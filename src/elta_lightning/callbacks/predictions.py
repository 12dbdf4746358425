"""The one way our prediction callbacks collect ``trainer.predict``'s outputs: every predicted
image's row (``index``), the named columns of ``predict_step``'s output and the batch's
``readable`` flags (True where the batch has none), in an
:class:`~elta_lightning.metrics.IndexedCollector`, so that after the loop every process holds
the whole set in index order (uneven or empty shards under DDP; a repeated image is an error).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from elta_lightning.metrics import IndexedCollector


class GatherPredictions(pl.Callback):
    """Base of a callback that uses the whole predicted set: subclasses name the output columns
    (:meth:`columns`) and use the gathered table (:meth:`on_predictions`: ``index``,
    ``readable`` and the columns, on the module's device, in index order)."""

    def __init__(self) -> None:
        self.collector = IndexedCollector(["readable"])

    def columns(self, module: pl.LightningModule) -> list[str]:
        """The keys of ``predict_step``'s output to keep, for ``module``."""
        raise NotImplementedError

    def on_predictions(self, module: pl.LightningModule, table: dict[str, Tensor]) -> None:
        """Use the gathered ``table`` (every process gets the same one)."""
        raise NotImplementedError

    def on_predict_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        columns = [*self.columns(pl_module), "readable"]
        self.collector = IndexedCollector(columns).to(pl_module.device)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        readable = batch.get("readable")
        if readable is None:
            readable = torch.ones_like(outputs["index"], dtype=torch.bool)
        columns = {name: outputs[name] for name in self.collector.columns if name != "readable"}
        self.collector.update(outputs["index"], readable=readable, **columns)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        table = self.collector.compute()
        self.collector.reset()
        self.on_predictions(pl_module, table)
