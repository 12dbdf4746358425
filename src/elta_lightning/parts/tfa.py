"""TFA (ELTA's tail-oriented feature augmentation) as a part: ``method.parts=[tfa]``.

In each training step it appends ``m`` mixed samples to the pooled features, targets, scores and
loss weights (``B -> B + m``), so the head, the task loss and every later part (FLSA, ...) see
the augmented batch. The maths is :func:`elta_lightning.elta.tfa_mix`; this file only wires it
in. Temperatures act on the COMMON 0..10 score scale for every data set and head.

Randomness: the part's ``torch.Generator`` on the features' device (:meth:`Part.generator`),
seeded from the run's seed and the process's global rank, afresh at the start of each fit: the
same seed gives the same mixed pairs, and DDP processes draw different pairs. Sampling runs on
the device (``torch.multinomial``), without host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from elta_lightning.elta import resolve_num_mixed, tfa_mix
from elta_lightning.errors import require
from elta_lightning.parts.base import Part, PartContext, TrainStep
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class TFAConfig:
    """Tail-oriented feature augmentation (feature-space mixup). Temperatures act on scores on the
    common 0..10 scale (ELTA-CSV scale: AVA/TAD66K as is, AADB x10, PARA x2) for every dataset
    and head. Authors' grid: tau1 in {0.05, 0.1, 0.2, 0.3, 0.4, 0.5}, tau2 in {2, ..., 7, 10}."""

    tau1: float = 0.5
    tau2: float = 2.0
    num_mixed: int = 1  # mixed samples appended per batch (authors: 1)
    mixed_ratio: float | None = None  # when set: m = max(1, round(ratio * B)), num_mixed ignored

    def __post_init__(self) -> None:
        require(self.tau1 > 0, "method.tfa.tau1", "> 0", self.tau1)
        require(self.tau2 > 0, "method.tfa.tau2", "> 0", self.tau2)
        require(self.num_mixed >= 1, "method.tfa.num_mixed", ">= 1", self.num_mixed)
        ratio = self.mixed_ratio
        require(
            ratio is None or 0 < ratio <= 1, "method.tfa.mixed_ratio", "null or in (0, 1]", ratio
        )


@register_part
class FeatureMixup(Part):
    """TFA on the pooled features of any backbone, either head: ``num_mixed`` mixed samples per
    batch, or ``mixed_ratio`` of the batch (``m = max(1, round(ratio * B))``, ELTA 2.0: 0.25)."""

    name = "tfa"
    config_class = TFAConfig

    def __init__(self, config: TFAConfig, context: PartContext) -> None:
        super().__init__(config, context)
        self.count = None if config.mixed_ratio is not None else config.num_mixed

    def transform_features(self, module: IAAModule, step: TrainStep) -> TrainStep:
        """The step with ``m`` TFA-mixed samples appended (weights mixed like the labels).

        Raises ``ValueError`` for a batch of fewer than 2 samples (no partner j != i exists).
        """
        features = step.features
        num_mixed = resolve_num_mixed(features.shape[0], self.count, self.config.mixed_ratio)
        generator = self.generator(features.device, module.global_rank)
        mixed = tfa_mix(
            features,
            step.targets,
            step.scores,
            num_mixed,
            self.config.tau1,
            self.config.tau2,
            generator,
        )
        lam = mixed.lam.to(step.weights.dtype)
        weights = lam * step.weights[mixed.first] + (1 - lam) * step.weights[mixed.partner]
        return step.with_(
            features=mixed.features,
            targets=mixed.targets,
            scores=mixed.scores,
            weights=torch.cat([step.weights, weights]),
        )
