"""FLSA (ELTA's feature-label similarity alignment) as a part: ``method.parts=[flsa]``.

An auxiliary loss ``weight * flsa_loss(features, scores)`` on the batch the head sees (after TFA
when TFA comes before it in ``method.parts``), with scores on the COMMON 0..10 scale, logged as
``train/flsa`` (the weighted term). The maths is :func:`elta_lightning.elta.flsa_loss`.

Under DDP the loss is computed per process by default (the authors' semantics). With
``gather=true`` features and scores of all processes are gathered with gradient
(``all_gather(..., sync_grads=True)``), so every process computes the loss of the global batch
(single-GPU semantics); on one process the gather returns the batch unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from elta_lightning.elta import flsa_loss
from elta_lightning.errors import require
from elta_lightning.parts.base import Part, TrainStep, gather_batch
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class FLSAConfig:
    """Feature-label similarity alignment loss. Authors' grid for the weight:
    {0.01, 0.1, 0.2, 0.5, 1, 5, 10, 100}. ``gather`` computes it over the batch gathered from all
    processes (single-GPU semantics under DDP)."""

    weight: float = 1.0
    gather: bool = False

    def __post_init__(self) -> None:
        require(self.weight > 0, "method.flsa.weight", "> 0 (leave flsa out of parts)", self.weight)


@register_part
class SimilarityAlignment(Part):
    """FLSA with loss weight ``weight`` (> 0; the authors searched 0.01 .. 100)."""

    name = "flsa"
    config_class = FLSAConfig

    def auxiliary_loss(
        self, module: IAAModule, step: TrainStep, output: torch.Tensor
    ) -> torch.Tensor:
        features, scores = step.features, step.scores
        if self.config.gather:
            features, scores = gather_batch(module, features, scores)
        return self.config.weight * flsa_loss(features, scores)
