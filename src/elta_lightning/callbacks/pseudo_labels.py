"""APDS inside Lightning's predict loop: collect the logits of every predicted image, then sharpen
and select pseudo-labels over the WHOLE set (the sharpening's reference ``s_bar`` is the mean
predicted score of all images, on every process alike).

Use :class:`PseudoLabelSelector` as a callback of ``trainer.predict`` on a loader whose batches
carry ``image``, ``index`` (the image's row in the predicted set) and optionally ``readable``
(False for images that could not be decoded: they are predicted as a blank placeholder and left
out of the selection). The module must have the distribution head (its ``predict_step`` returns
``logits``). Under DDP each process predicts its own shard; the logits are gathered
(:class:`~elta_lightning.callbacks.predictions.GatherPredictions`), so
:attr:`PseudoLabelSelector.selection` is the same on every process. No ground truth is used:
the selection is :func:`select_pseudo_labels` with the given ``beta`` and ``threshold``; scores
are on the COMMON 0..10 scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from elta_lightning.callbacks.predictions import GatherPredictions
from elta_lightning.elta import select_pseudo_labels
from elta_lightning.errors import EltaError
from elta_lightning.models.module import IAAModule


class PseudoLabelError(EltaError, ValueError):
    """APDS cannot run: no distribution head, or nothing to select from."""


def require_iaa_module(module: pl.LightningModule) -> IAAModule:
    """``module`` itself if it is an IAAModule (APDS needs its scale and head), else TypeError."""
    if not isinstance(module, IAAModule):
        raise TypeError(f"APDS needs an IAAModule (or a subclass), got {type(module).__name__}")
    return module


@dataclass(frozen=True)
class PseudoLabelSelection:
    """APDS over a predicted set of ``N`` readable images (rows in set order), ``K`` levels.

    ``index`` (N,) rows of the predicted set; ``unreadable`` (U,) rows that could not be
    decoded; ``logits`` (N, K); ``levels`` (K,) on the common 0..10 scale; ``scores`` (N,)
    predicted (unsharpened) mean scores on the common scale; ``unsharpened`` / ``sharpened``
    (N, K); ``selected`` (N,) bool; ``beta`` and ``threshold`` used. Tensors live on the CPU.
    """

    index: Tensor
    unreadable: Tensor
    logits: Tensor
    levels: Tensor
    scores: Tensor
    unsharpened: Tensor
    sharpened: Tensor
    selected: Tensor
    beta: float
    threshold: float

    @classmethod
    def compute(
        cls,
        index: Tensor,
        logits: Tensor,
        readable: Tensor,
        levels: Tensor,
        beta: float,
        threshold: float,
    ) -> PseudoLabelSelection:
        """Sharpen and select the readable rows (``select_pseudo_labels``, no ground truth)."""
        index, logits, readable = index.cpu(), logits.cpu(), readable.cpu()
        if not readable.any():
            raise PseudoLabelError("no readable image in the unlabeled set: nothing to select")
        levels = levels.detach().cpu().float()
        result = select_pseudo_labels(logits[readable], levels, beta, threshold)
        return cls(
            index=index[readable],
            unreadable=index[~readable],
            logits=logits[readable],
            levels=levels,
            scores=result.scores,
            unsharpened=result.unsharpened,
            sharpened=result.sharpened,
            selected=result.selected,
            beta=float(beta),
            threshold=float(threshold),
        )

    def with_params(self, beta: float, threshold: float) -> PseudoLabelSelection:
        """The same predictions selected with another ``beta`` and ``threshold``."""
        readable = torch.ones_like(self.index, dtype=torch.bool)
        selection = PseudoLabelSelection.compute(
            self.index, self.logits, readable, self.levels, beta, threshold
        )
        return replace(selection, unreadable=self.unreadable)

    def stored(self, store: Literal["unsharpened", "sharpened"]) -> Tensor:
        """The distributions (N, K) that become pseudo-labels (ELTA 1.0: unsharpened)."""
        return self.sharpened if store == "sharpened" else self.unsharpened

    @property
    def confidence(self) -> Tensor:
        """Largest probability of each sharpened distribution (what the threshold bounds)."""
        return self.sharpened.amax(dim=1)


class PseudoLabelSelector(GatherPredictions):
    """Runs APDS at the end of ``trainer.predict``; the outcome is :attr:`selection`."""

    def __init__(self, beta: float, threshold: float) -> None:
        super().__init__()
        self.beta = beta
        self.threshold = threshold
        self.selection: PseudoLabelSelection | None = None

    def columns(self, module: pl.LightningModule) -> list[str]:
        module = require_iaa_module(module)
        if module.head_kind != "distribution":
            raise PseudoLabelError(
                "APDS pseudo-labels need the distribution head (model.head=distribution, on data "
                f"with vote distributions); this model has the {module.head_kind} head"
            )
        self.selection = None
        return ["logits"]

    def on_predictions(self, module: pl.LightningModule, table: dict[str, Tensor]) -> None:
        module = require_iaa_module(module)
        levels = module.scale.levels_tensor() * module.scale.to_common
        self.selection = PseudoLabelSelection.compute(
            table["index"], table["logits"], table["readable"], levels, self.beta, self.threshold
        )
