"""Cost-sensitive re-weighting as parts: ``inv`` and ``sqinv`` (inverse / square-root inverse
frequency of a sample's label bin) and ``lds`` (label-distribution smoothing of those weights).

The per-bin weights are computed once, from the training label statistics (the same on every
process), and kept as a buffer (in checkpoints). In a training step a sample's weight is a
lookup by the bin of its score on the common scale: no host sync, and pseudo-labelled rows of a
self-training round get their weights from the same statistics as the labelled ones. The maths
is :mod:`elta_lightning.longtail.reweighting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from elta_lightning.errors import require
from elta_lightning.longtail.reweighting import bin_weights, lds_kernel, sample_weights
from elta_lightning.parts.base import Part, PartContext, TrainStep
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class InvConfig:
    """Inverse-frequency weights 1 / clip(n_b, clip_min, clip_max) (reference: clip 5..1000,
    "clip weights for inverse re-weight"; null: no bound)."""

    clip_min: float | None = 5.0
    clip_max: float | None = 1000.0

    def __post_init__(self) -> None:
        check_clip("method.inv", self.clip_min, self.clip_max)


@dataclass
class SqinvConfig:
    """Square-root inverse-frequency weights 1 / sqrt(n_b) (no options)."""


@dataclass
class LDSConfig:
    """Label-distribution smoothing: the ``base`` weights' per-bin values (sqrt counts or clipped
    counts) convolved with a kernel over the label bins before inverting (reference order).
    ``size`` and ``sigma`` are in bins: with the default bin width 0.1 on the common 0..10 scale,
    100 bins span the range, as 1-year bins span ages 0..100 in the reference, so its README
    values (gaussian, size 5, sigma 2) carry over. ``clip_*`` apply to ``base=inv``."""

    base: Literal["sqinv", "inv"] = "sqinv"
    kernel: Literal["gaussian", "triang", "laplace"] = "gaussian"
    size: int = 5
    sigma: float = 2.0
    clip_min: float | None = 5.0
    clip_max: float | None = 1000.0

    def __post_init__(self) -> None:
        require(
            self.size >= 1 and self.size % 2 == 1,
            "method.lds.size",
            "an odd number >= 1",
            self.size,
        )
        require(self.sigma > 0, "method.lds.sigma", "> 0", self.sigma)
        check_clip("method.lds", self.clip_min, self.clip_max)


def check_clip(node: str, low: float | None, high: float | None) -> None:
    """Count bounds of inverse weights: positive, low <= high."""
    require(low is None or low > 0, f"{node}.clip_min", "null or > 0", low)
    require(high is None or high > 0, f"{node}.clip_max", "null or > 0", high)
    ordered = low is None or high is None or low <= high
    require(ordered, f"{node}.clip_min", f"<= clip_max ({high})", low)


class WeightTable(nn.Module):
    """Per-bin loss weights (num_bins,), mean 1 over the training images."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", weights.float())


class Reweighting(Part):
    """Shared wiring of the weighting parts: a per-bin table, looked up per sample."""

    weights_samples = True

    def __init__(self, config, context: PartContext) -> None:
        super().__init__(config, context)
        self.state = WeightTable(self.bin_weights(context.stats.counts_tensor()))

    def bin_weights(self, counts: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample_weights(self, module: IAAModule, step: TrainStep) -> torch.Tensor:
        bins = module.label_stats.bin_index(step.scores)
        return sample_weights(self.state.weights, bins)


@register_part
class InverseWeighting(Reweighting):
    """INV: weight 1 / clip(n_b) of the sample's label bin."""

    name = "inv"
    config_class = InvConfig

    def bin_weights(self, counts: torch.Tensor) -> torch.Tensor:
        clip = (self.config.clip_min, self.config.clip_max)
        return bin_weights(counts, "inv", None, clip)


@register_part
class SqrtInverseWeighting(Reweighting):
    """SQINV: weight 1 / sqrt(n_b) of the sample's label bin."""

    name = "sqinv"
    config_class = SqinvConfig

    def bin_weights(self, counts: torch.Tensor) -> torch.Tensor:
        return bin_weights(counts, "sqinv", None)


@register_part
class LabelDistributionSmoothing(Reweighting):
    """LDS: inverse of the kernel-smoothed (sqrt) label density of the sample's bin."""

    name = "lds"
    config_class = LDSConfig

    def bin_weights(self, counts: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        kernel = lds_kernel(cfg.kernel, cfg.size, cfg.sigma)
        return bin_weights(counts, cfg.base, kernel, (cfg.clip_min, cfg.clip_max))
