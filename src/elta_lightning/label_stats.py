"""Dataset-level statistics of the training labels, computed once and shared by every long-tail
part and metric that needs them: one binning of scores on the common 0..10 scale, the per-bin
training counts, the many / medium / few-shot class of each bin and the 20th / 80th percentile
cuts of the low / mid / high regions.

Why one object: LDS weights, FDS statistics, the Balanced-MSE prior, C-Mixup partners and the
few-shot metrics all reason about "how many training images have a score like this one"; if each
binned the labels its own way, a comparison of methods would compare binnings too. The
statistics are a pure function of the full training label array (never of a process's shard),
so every DDP process computes the same values; they travel in a checkpoint's hyper-parameters,
so a reloaded model has them without reading any data.

Bins: ``b(s) = clamp(floor(s / width + 1e-3), 0, num_bins - 1)`` for a score ``s`` on the common
scale, ``num_bins = round(10 / width)`` (the last bin holds a score of exactly 10; the small
tolerance keeps decimal scores on a bin edge, e.g. 5.3 in float32, in the bin they start), the
same function as the few-shot metrics' (:func:`elta_lightning.metrics.score_bins`).
Distribution targets use their mean score. Shots (the DIR protocol's regions, with counts
relative to the training set so one default suits AVA's 230k images and a 2k-image subset
alike): a bin is *many-shot* when it holds at least ``many_share`` of the training images,
*few-shot* below ``few_share``, *medium* otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from elta_lightning.errors import EltaError
from elta_lightning.metrics import (
    SHOT_NAMES,
    ShotBins,
    num_score_bins,
    region_cuts,
    score_bin_counts,
    score_bins,
    shot_regions,
)

__all__ = ["SHOT_NAMES", "LabelStats", "LabelStatsError", "check_binning"]


class LabelStatsError(EltaError, ValueError):
    """Training labels or binning settings from which no statistics can be computed."""


@dataclass(frozen=True)
class LabelStats:
    """Statistics of the training labels (see the module docstring).

    ``bin_width``: width of a bin on the common scale; ``counts``: training images per bin;
    ``cuts``: low / mid / high region cuts on the NATIVE scale (20th / 80th percentiles);
    ``many_share`` / ``few_share``: shot thresholds as shares of the training set.
    """

    bin_width: float
    counts: tuple[int, ...]
    cuts: tuple[float, float]
    many_share: float = 0.02
    few_share: float = 0.005

    @classmethod
    def from_scores(
        cls,
        train_scores: torch.Tensor,
        to_common: float,
        bin_width: float = 0.1,
        many_share: float = 0.02,
        few_share: float = 0.005,
    ) -> LabelStats:
        """Statistics of ``train_scores`` (native scale, the WHOLE training split)."""
        check_binning(bin_width, many_share, few_share)
        scores = torch.as_tensor(train_scores, dtype=torch.float64).reshape(-1)
        if scores.numel() == 0 or not torch.isfinite(scores).all():
            raise LabelStatsError("label statistics need finite training scores; got none or NaN")
        counts = score_bin_counts(scores, bin_width, to_common)
        return cls(
            bin_width=float(bin_width),
            counts=tuple(int(c) for c in counts.tolist()),
            cuts=region_cuts(scores),
            many_share=float(many_share),
            few_share=float(few_share),
        )

    @classmethod
    def from_hparams(cls, values: dict[str, Any]) -> LabelStats:
        """Inverse of :meth:`hparams` (a checkpoint's stored statistics)."""
        return cls(
            bin_width=float(values["bin_width"]),
            counts=tuple(int(c) for c in values["counts"]),
            cuts=(float(values["cuts"][0]), float(values["cuts"][1])),
            many_share=float(values["many_share"]),
            few_share=float(values["few_share"]),
        )

    def hparams(self) -> dict[str, Any]:
        """Plain lists and numbers, for checkpoint hyper-parameters and run notes."""
        values = asdict(self)
        values["counts"] = list(self.counts)
        values["cuts"] = list(self.cuts)
        return values

    # ----- derived values ------------------------------------------------------------------
    @property
    def num_bins(self) -> int:
        return len(self.counts)

    @property
    def num_train(self) -> int:
        return sum(self.counts)

    @property
    def shot_thresholds(self) -> tuple[int, int]:
        """(many, few) in images: many-shot iff count >= many, few-shot iff count < few."""
        many = max(1, math.ceil(self.many_share * self.num_train))
        few = max(1, math.ceil(self.few_share * self.num_train))
        return many, min(few, many)

    def shot_of_bin(self) -> torch.Tensor:
        """(num_bins,) long: 0 many-shot, 1 medium-shot, 2 few-shot (see :data:`SHOT_NAMES`)."""
        many, few = self.shot_thresholds
        return shot_regions(torch.tensor(self.counts), many, few)

    def shot_bins(self) -> ShotBins:
        """The shot region of every bin, as the few-shot metrics take it."""
        return ShotBins(self.bin_width, self.shot_of_bin())

    def counts_tensor(self, device: torch.device | None = None) -> torch.Tensor:
        """Per-bin training counts, (num_bins,) float64."""
        return torch.tensor(self.counts, dtype=torch.float64, device=device)

    def centres(self, device: torch.device | None = None) -> torch.Tensor:
        """Bin centres on the common scale, (num_bins,) float32."""
        index = torch.arange(self.num_bins, dtype=torch.float32, device=device)
        return (index + 0.5) * self.bin_width

    def bin_index(self, scores_common: torch.Tensor) -> torch.Tensor:
        """Bin of each score on the common scale (any shape, long); no host sync."""
        return score_bins(scores_common, self.bin_width, 1.0)


def check_binning(bin_width: float, many_share: float, few_share: float) -> None:
    """Reject settings that give no usable bins or shot regions."""
    if not 0 < bin_width <= 10:
        raise LabelStatsError(f"bin width must be in (0, 10] on the common scale; got {bin_width}")
    num_score_bins(bin_width)
    if not 0 < few_share <= many_share < 1:
        raise LabelStatsError(
            f"shot shares need 0 < few_share <= many_share < 1; got few_share={few_share}, "
            f"many_share={many_share}"
        )
