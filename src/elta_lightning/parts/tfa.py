"""TFA (tail-oriented feature augmentation) as a plug-in: a Lightning callback for any IAAModule.

The callback registers itself as the feature transform ``tfa`` of the module it is fitted with;
in each training step it appends ``m`` mixed samples to the pooled features, targets, scores and
loss weights (``B -> B + m``), so the head, the task loss and every auxiliary loss (FLSA, ...)
see the augmented batch. The maths is :func:`elta_lightning.elta.tfa_mix`; this file only wires
it in. Temperatures act on the COMMON 0..10 score scale (``TrainBatch.scores``) for every data
set and head.

Randomness: a ``torch.Generator`` on the features' device, seeded from ``seed`` and the
process's global rank (``seed * 2**16 + rank``), created on the first step of each fit: the same
seed gives the same mixed pairs, and DDP processes draw different pairs. Sampling runs on the
device (``torch.multinomial``), without host synchronisation.
"""

from __future__ import annotations

from typing import Any

import torch

from elta_lightning.callbacks.plugin import PlugIn
from elta_lightning.elta import resolve_num_mixed, tfa_mix
from elta_lightning.models.module import IAAModule, TrainBatch

#: Generator seed = seed * RANK_STRIDE + global rank: distinct streams per process.
RANK_STRIDE = 2**16


class FeatureMixup(PlugIn):
    """TFA on the pooled features of any IAAModule (any timm backbone, either head).

    ``num_mixed`` mixed samples per batch, or ``mixed_ratio`` of the batch
    (``m = max(1, round(ratio * B))``, ELTA 2.0 uses 0.25) when given. Use as a Trainer callback,
    or :meth:`attach` it to a module directly (what :class:`ELTAModule` does).
    """

    name = "tfa"

    def __init__(
        self,
        tau1: float = 0.5,
        tau2: float = 2.0,
        num_mixed: int = 1,
        mixed_ratio: float | None = None,
        seed: int = 0,
    ) -> None:
        if not (tau1 > 0 and tau2 > 0):
            raise ValueError(f"TFA temperatures must be > 0, got tau1={tau1!r}, tau2={tau2!r}")
        count = None if mixed_ratio is not None else num_mixed
        resolve_num_mixed(2, count, mixed_ratio)  # reject bad values now, not at the first step
        self.tau1 = tau1
        self.tau2 = tau2
        self.count = count
        self.ratio = mixed_ratio
        self.seed = seed
        self.generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, tfa: Any, seed: int) -> FeatureMixup:
        """From ``cfg.method.tfa`` (a TFAConfig node) and the run's seed."""
        return cls(tfa.tau1, tfa.tau2, tfa.num_mixed, tfa.mixed_ratio, seed)

    # ----- wiring ------------------------------------------------------------------------------
    def attach(self, module: IAAModule) -> None:
        """Register as the module's ``tfa`` feature transform (fresh random stream)."""
        module.feature_transforms[self.name] = self
        self.generator = None

    def detach(self, module: IAAModule) -> None:
        module.feature_transforms.pop(self.name, None)

    # ----- the transform -----------------------------------------------------------------------
    def _generator(self, device: torch.device, rank: int) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed * RANK_STRIDE + rank)
        return self.generator

    def __call__(self, module: IAAModule, batch: TrainBatch) -> TrainBatch:
        """The batch with ``m`` TFA-mixed samples appended (weights mixed like the labels).

        Raises ``ValueError`` for a batch of fewer than 2 samples (no partner j != i exists).
        """
        features = batch.features
        num_mixed = resolve_num_mixed(features.shape[0], self.count, self.ratio)
        generator = self._generator(features.device, module.global_rank)
        mixed = tfa_mix(
            features, batch.targets, batch.scores, num_mixed, self.tau1, self.tau2, generator
        )
        lam = mixed.lam.to(batch.weights.dtype)
        weights = lam * batch.weights[mixed.first] + (1 - lam) * batch.weights[mixed.partner]
        return TrainBatch(
            features=mixed.features,
            targets=mixed.targets,
            scores=mixed.scores,
            weights=torch.cat([batch.weights, weights]),
        )
