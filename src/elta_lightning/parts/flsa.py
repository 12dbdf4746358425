"""FLSA (feature-label similarity alignment) as a plug-in: a Lightning callback for any IAAModule.

The callback registers the auxiliary loss ``flsa`` of the module it is fitted with:
``weight * flsa_loss(features, scores)`` on the batch the head sees (after TFA, when TFA is
attached before it), with scores on the COMMON 0..10 scale. The module adds it to the task loss
and logs it as ``train/flsa`` (the weighted term). The maths is
:func:`elta_lightning.elta.flsa_loss`.

Under DDP the loss is computed per process by default (the authors' semantics). With
``gather=True`` features and scores of all processes are gathered with gradient
(``all_gather(..., sync_grads=True)``), so every process computes the loss of the global batch
(single-GPU semantics); on one process the gather returns the batch unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from elta_lightning.callbacks.plugin import PlugIn
from elta_lightning.elta import flsa_loss
from elta_lightning.models.module import IAAModule, TrainBatch


class SimilarityAlignment(PlugIn):
    """FLSA with loss weight ``weight`` (> 0; the authors searched 0.01 .. 100)."""

    name = "flsa"

    def __init__(self, weight: float = 1.0, gather: bool = False) -> None:
        if not weight > 0:
            raise ValueError(f"FLSA weight must be > 0 (0 means: do not attach), got {weight!r}")
        self.weight = float(weight)
        self.gather = gather

    @classmethod
    def from_config(cls, flsa: Any) -> SimilarityAlignment:
        """From ``cfg.method.flsa`` (an FLSAConfig node)."""
        return cls(flsa.weight, flsa.gather)

    def attach(self, module: IAAModule) -> None:
        """Register as the module's ``flsa`` auxiliary loss."""
        module.auxiliary_losses[self.name] = self

    def detach(self, module: IAAModule) -> None:
        module.auxiliary_losses.pop(self.name, None)

    def __call__(self, module: IAAModule, batch: TrainBatch, output: torch.Tensor) -> torch.Tensor:
        features, scores = batch.features, batch.scores
        if self.gather:
            dim = features.shape[-1]
            features = module.all_gather(features, sync_grads=True).reshape(-1, dim)
            scores = module.all_gather(scores, sync_grads=True).reshape(-1)
        return self.weight * flsa_loss(features, scores)
