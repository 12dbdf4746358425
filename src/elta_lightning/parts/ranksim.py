"""RankSim (Gong et al., ICML 2022) as a part: ``method.parts=[ranksim]``. An auxiliary loss
``gamma * L_RankSim`` asking the ranking of each sample's feature similarities to the batch to
follow the ranking of its label similarities; ranks are differentiated with the blackbox
method (``interpolation_lambda``). Duplicated labels are thinned to one random sample per label
bin (the reference de-duplicates exact labels; continuous mean scores have none, so we use the
run's bins). The maths is :mod:`elta_lightning.longtail.ranksim`.

Randomness (the de-duplication): a generator seeded from the run's seed and the process's rank.
Under DDP, ``gather=true`` ranks against the features of every process's batch (with gradient),
the reference's DataParallel semantics; every process then draws the same de-duplication (one
seed), so all compute the same global loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from elta_lightning.errors import require
from elta_lightning.longtail.ranksim import dedup_mask, ranksim_loss
from elta_lightning.parts.base import Part, TrainStep, gather_batch
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class RankSimConfig:
    """RankSim. ``gamma``: loss weight; the reference's 100 balances an L1 loss on ages (values
    around 7); our EMD / unit-scale MSE task losses are about 100 times smaller, so the default is
    1.0 (tune with a sweep). ``interpolation_lambda``: the blackbox gradient's lambda (reference
    2). ``dedup``: thin repeated label bins to one sample each (reference behaviour)."""

    gamma: float = 1.0
    interpolation_lambda: float = 2.0
    dedup: bool = True
    gather: bool = False

    def __post_init__(self) -> None:
        require(self.gamma > 0, "method.ranksim.gamma", "> 0", self.gamma)
        lam = self.interpolation_lambda
        require(lam > 0, "method.ranksim.interpolation_lambda", "> 0", lam)


@register_part
class RankSim(Part):
    """RankSim as an auxiliary loss on the pooled features."""

    name = "ranksim"
    random_stream = 1
    config_class = RankSimConfig

    def auxiliary_loss(
        self, module: IAAModule, step: TrainStep, output: torch.Tensor
    ) -> torch.Tensor:
        features, scores = step.features, step.scores
        if self.config.gather:
            features, scores = gather_batch(module, features, scores)
        keep = None
        if self.config.dedup:
            rank = 0 if self.config.gather else module.global_rank
            generator = self.generator(features.device, rank)
            keep = dedup_mask(module.label_stats.bin_index(scores), generator)
        loss = ranksim_loss(features, scores, self.config.interpolation_lambda, keep)
        return self.config.gamma * loss
