"""MAE per many / medium / few-shot region of the target score and balanced MAE (the DIR
protocol): score bins on the common 0..10 scale (:func:`score_bins`, :func:`score_bin_counts`),
shot regions from the training counts per bin (:func:`shot_regions`, :class:`ShotBins`) and
:class:`ShotMAE` with its functional form."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from elta_lightning.metrics._inputs import _as_float, _check_scores

__all__ = [
    "BIN_EDGE_TOLERANCE",
    "SHOT_NAMES",
    "ShotBins",
    "ShotMAE",
    "num_score_bins",
    "score_bin_counts",
    "score_bins",
    "shot_mae",
    "shot_regions",
]

#: Shot regions of the DIR protocol, in the order of the codes of :func:`shot_regions` (0, 1, 2).
SHOT_NAMES: tuple[str, str, str] = ("many", "medium", "few")

#: A score this close below a bin edge (in bin widths) counts in the upper bin, so that decimal
#: scores on an edge (6.6 with width 0.1: 6.6 / 0.1 = 65.99999... in floating point) are binned
#: as written. 1e-3 bin widths stays above float32 rounding up to thousands of bins.
BIN_EDGE_TOLERANCE = 1e-3


def num_score_bins(bin_width: float) -> int:
    """Number of bins of width ``bin_width`` on the common 0..10 scale: ``round(10 / bin_width)``.

    Example:
        >>> num_score_bins(0.5), num_score_bins(0.1), num_score_bins(3.0)
        (20, 100, 3)
    """
    width = float(bin_width)
    if not (math.isfinite(width) and width > 0.0):
        raise ValueError(f"bin_width must be a positive finite number; got {bin_width!r}")
    num_bins = round(10.0 / width)
    if num_bins < 1:
        raise ValueError(f"bin_width {bin_width!r} gives no bin on the 0..10 scale")
    return num_bins


def score_bins(scores: Tensor, bin_width: float, to_common: float) -> Tensor:
    r"""Bin index (long, same shape) of every score; scores are on the dataset's native scale.

    .. math:: b(s) = \min\!\big(\max\!\big(\lfloor s \cdot \mathrm{to\_common} / w
              + \epsilon \rfloor, 0\big), B - 1\big),\quad B = \mathrm{round}(10 / w)

    with :data:`BIN_EDGE_TOLERANCE` :math:`\epsilon` (bin ``k`` is
    :math:`[k w, (k + 1) w)` on the common 0..10 scale; scores below 0 go to the first bin, the
    top score 10 and anything above to the last). Use the same function for the training counts
    (:func:`score_bin_counts`) and for evaluation. Runs on the device, no host sync.

    Example:
        >>> score_bins(torch.tensor([0.0, 3.3, 4.99, 5.0, 10.0]), bin_width=2.0, to_common=2.0)
        tensor([0, 3, 4, 4, 4])
    """
    num_bins = num_score_bins(bin_width)
    factor = float(to_common) / float(bin_width)
    scaled = _as_float(scores) * factor + BIN_EDGE_TOLERANCE
    return torch.floor(scaled).clamp(0, num_bins - 1).long()


def score_bin_counts(train_scores: Tensor, bin_width: float, to_common: float) -> Tensor:
    """(num_bins,) long: number of training scores (native scale) in each :func:`score_bins` bin.

    Example:
        >>> score_bin_counts(torch.tensor([1.0, 3.0, 3.5, 9.0, 10.0]), bin_width=2.5, to_common=1.0)
        tensor([1, 2, 0, 2])
    """
    bins = score_bins(torch.as_tensor(train_scores).reshape(-1), bin_width, to_common)
    counts = torch.zeros(num_score_bins(bin_width), dtype=torch.long, device=bins.device)
    return counts.index_add_(0, bins, torch.ones_like(bins))


def shot_regions(counts: Tensor, many: int, few: int) -> Tensor:
    """Shot region of every bin from its training count: 0 = many, 1 = medium, 2 = few.

    many-shot: ``count >= many``; few-shot: ``count < few``; medium-shot otherwise. Needs
    ``0 <= few <= many`` (``few == many``: no medium bin). The DIR repos use ``count > 100`` and
    ``count < 20``, i.e. ``many=101, few=20``. Runs on the device, no host sync.

    Example:
        >>> shot_regions(torch.tensor([0, 19, 20, 100, 101, 353]), many=101, few=20)
        tensor([2, 2, 1, 1, 0, 0])
    """
    many, few = int(many), int(few)
    if not 0 <= few <= many:
        raise ValueError(f"need 0 <= few <= many; got many={many}, few={few}")
    counts = torch.as_tensor(counts)
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise TypeError(f"training counts must be integers; got dtype {counts.dtype}")
    medium = torch.ones_like(counts, dtype=torch.long)
    return torch.where(counts >= many, 0, torch.where(counts < few, 2, medium))


def _check_shot_of_bin(shot_of_bin: Tensor | Sequence[int], num_bins: int) -> tuple[int, ...]:
    values = torch.as_tensor(shot_of_bin)
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"shot_of_bin must hold integer region codes; got dtype {values.dtype}")
    codes = tuple(int(v) for v in values.reshape(-1).tolist())
    if values.ndim != 1 or len(codes) != num_bins:
        raise ValueError(
            f"shot_of_bin must have shape ({num_bins},) (one code per bin); "
            f"got {tuple(values.shape)}"
        )
    if any(c not in (0, 1, 2) for c in codes):
        raise ValueError(f"shot_of_bin codes must be 0 (many), 1 (medium) or 2 (few); got {codes}")
    return codes


@dataclass(frozen=True)
class ShotBins:
    """The shot-region setup of :class:`IAAMetrics`: bin width on the common 0..10 scale and the
    region code (0 many, 1 medium, 2 few) of every bin, fixed from the training labels.

    ``shot_of_bin`` may be given as a tensor or sequence; it is stored as a tuple of ints.

    Example:
        >>> counts = score_bin_counts(torch.tensor([1.0, 3.0, 3.5, 9.0, 10.0]), 2.5, to_common=1.0)
        >>> ShotBins.from_counts(counts, bin_width=2.5, many=2, few=1)
        ShotBins(bin_width=2.5, shot_of_bin=(1, 0, 2, 0))
    """

    bin_width: float
    shot_of_bin: tuple[int, ...]

    def __post_init__(self) -> None:
        num_bins = num_score_bins(self.bin_width)
        object.__setattr__(self, "bin_width", float(self.bin_width))
        object.__setattr__(self, "shot_of_bin", _check_shot_of_bin(self.shot_of_bin, num_bins))

    @property
    def num_bins(self) -> int:
        return len(self.shot_of_bin)

    @classmethod
    def from_counts(cls, counts: Tensor, bin_width: float, many: int, few: int) -> ShotBins:
        """From per-bin training counts (:func:`score_bin_counts`) and :func:`shot_regions`."""
        return cls(bin_width, tuple(shot_regions(counts, many, few).tolist()))


def _shot_mae_update(
    preds: Tensor, target: Tensor, bin_width: float, to_common: float
) -> tuple[Tensor, Tensor]:
    """Per-bin sum of absolute errors (native scale) and per-bin count; the target picks the bin."""
    _check_scores(preds, target)
    preds, target = _as_float(preds), _as_float(target)
    bins = score_bins(target, bin_width, to_common)
    abs_error = (preds - target).abs()
    num_bins = num_score_bins(bin_width)
    sum_abs_error = torch.zeros(num_bins, dtype=abs_error.dtype, device=abs_error.device)
    total = torch.zeros(num_bins, dtype=torch.long, device=bins.device)
    sum_abs_error.index_add_(0, bins, abs_error)
    total.index_add_(0, bins, torch.ones_like(bins))
    return sum_abs_error, total


def _shot_mae_compute(
    sum_abs_error: Tensor, total: Tensor, shot_of_bin: Tensor
) -> dict[str, Tensor]:
    region_sum = torch.zeros(3, dtype=sum_abs_error.dtype, device=sum_abs_error.device)
    region_total = torch.zeros(3, dtype=total.dtype, device=total.device)
    region_sum.index_add_(0, shot_of_bin, sum_abs_error)
    region_total.index_add_(0, shot_of_bin, total)
    region = region_sum / region_total  # 0 / 0 = NaN for an empty region
    evaluated = total > 0
    per_bin = sum_abs_error / total.clamp(min=1)
    balanced = (per_bin * evaluated).sum() / evaluated.sum()  # NaN before any sample
    values = {name: region[i] for i, name in enumerate(SHOT_NAMES)}
    values["balanced"] = balanced
    return values


def shot_mae(
    preds: Tensor,
    target: Tensor,
    bin_width: float,
    to_common: float,
    shot_of_bin: Tensor | Sequence[int],
) -> dict[str, Tensor]:
    """Functional :class:`ShotMAE`: ``{"many", "medium", "few", "balanced"}`` MAE."""
    codes = _check_shot_of_bin(shot_of_bin, num_score_bins(bin_width))
    sum_abs_error, total = _shot_mae_update(preds, target, bin_width, to_common)
    return _shot_mae_compute(sum_abs_error, total, torch.tensor(codes, device=total.device))


class ShotMAE(Metric):
    r"""MAE per many / medium / few-shot region of the *target* score, and balanced MAE (DIR).

    Targets are binned on the common 0..10 scale (:func:`score_bins`: bin width :math:`w`,
    :math:`B = \mathrm{round}(10 / w)` bins); each bin has a fixed shot region
    (``shot_of_bin``, normally :func:`shot_regions` of the training counts per bin). Errors
    :math:`e_i = \hat{y}_i - y_i` are on the native scale. With :math:`n_b` the number of
    evaluated samples whose target is in bin :math:`b`:

    .. math:: \mathrm{MAE}_R = \frac{\sum_{i: \mathrm{shot}(b(y_i)) = R} |e_i|}
              {|\{i: \mathrm{shot}(b(y_i)) = R\}|}, \qquad
              \mathrm{bMAE} = \frac{1}{|\{b: n_b > 0\}|}\sum_{b: n_b > 0}
              \frac{1}{n_b}\sum_{i: b(y_i) = b} |e_i|

    :math:`\mathrm{MAE}_R` is sample-weighted within the region (DIR's ``shot_metrics``);
    bMAE is the unweighted mean of the per-bin MAE over the bins with evaluated samples (the
    Balanced MSE repo's ``balanced_metrics``). Every sample is in exactly one bin and one region.
    States: per-bin ``sum_abs_error`` and ``total`` (B,), sum-reduced, exact under DDP.
    ``compute`` returns ``{"many", "medium", "few", "balanced"}`` of 0-d tensors; **a region
    without samples gives NaN** (so does everything before any sample).

    Example:
        >>> import torch
        >>> # PARA-like (to_common 2); 5 bins of width 2 on 0..10: many, many, medium, few, few
        >>> metric = ShotMAE(bin_width=2.0, to_common=2.0, shot_of_bin=[0, 0, 1, 2, 2])
        >>> metric.update(torch.tensor([1.5, 2.5, 3.0, 4.25]), torch.tensor([1.25, 2.25, 2.5, 4.5]))
        >>> # common targets 2.5, 4.5, 5.0, 9.0 -> bins 1, 2, 2, 4; |e| = 0.25, 0.25, 0.5, 0.25
        >>> # many {bin 1}: 0.25; medium {bin 2}: (0.25 + 0.5) / 2; few {bin 4}: 0.25
        >>> # balanced: mean of per-bin MAE 0.25, 0.375, 0.25 = 0.875 / 3
        >>> {k: round(v.item(), 4) for k, v in metric.compute().items()}
        {'many': 0.25, 'medium': 0.375, 'few': 0.25, 'balanced': 0.2917}
    """

    is_differentiable: bool = False
    higher_is_better: bool = False
    full_state_update: bool = False
    plot_lower_bound: float = 0.0

    sum_abs_error: Tensor
    total: Tensor

    def __init__(
        self,
        bin_width: float,
        to_common: float,
        shot_of_bin: Tensor | Sequence[int],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        num_bins = num_score_bins(bin_width)
        if not (math.isfinite(float(to_common)) and float(to_common) > 0.0):
            raise ValueError(f"to_common must be a positive finite number; got {to_common!r}")
        self.bin_width = float(bin_width)
        self.to_common = float(to_common)
        self.shot_of_bin = _check_shot_of_bin(shot_of_bin, num_bins)
        self.add_state("sum_abs_error", default=torch.zeros(num_bins), dist_reduce_fx="sum")
        self.add_state(
            "total", default=torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum"
        )

    @property
    def num_bins(self) -> int:
        return len(self.shot_of_bin)

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and target scores, both (B,), on the native scale."""
        sum_abs_error, total = _shot_mae_update(preds, target, self.bin_width, self.to_common)
        self.sum_abs_error += sum_abs_error
        self.total += total

    def compute(self) -> dict[str, Tensor]:
        """``{"many", "medium", "few", "balanced"}`` MAE; NaN for a region without samples."""
        shot_of_bin = torch.tensor(self.shot_of_bin, device=self.total.device)
        return _shot_mae_compute(self.sum_abs_error, self.total, shot_of_bin)
