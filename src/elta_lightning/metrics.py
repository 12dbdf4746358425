"""IAA evaluation metrics on torchmetrics, exact under DDP.

What an evaluation stage reports (see DESIGN.md, "Metrics"): SRCC, PLCC, binary accuracy at the
dataset's threshold, MAE, MSE, EMD (r = 1, 2) where vote distributions exist, MAE per region of
the target score (low / mid / high, cut at the training labels' 20th and 80th percentiles) and,
optionally, MAE per many / medium / few-shot region plus balanced MAE (the DIR protocol on bins of
the target score, with per-bin training counts). Every number is computed over the whole
evaluation set and is the same on 1 and N processes:

* additive metrics keep ``sum`` and ``count`` states (``dist_reduce_fx="sum"``), so the DDP
  reduction is exact (up to float32 summation order);
* SRCC keeps every prediction (torchmetrics ``SpearmanCorrCoef``, ``cat`` states) and PLCC merges
  per-process moments (torchmetrics ``PearsonCorrCoef``);
* the caller must not feed duplicates: evaluate with
  ``lightning.pytorch.overrides.distributed.UnrepeatedDistributedSampler`` (Lightning's default
  ``DistributedSampler`` pads the set with repeated samples). :class:`IndexedCollector` (the
  per-image table) raises on a repeated dataset index, which catches padding.

``update`` methods never read tensor values on the host (no ``.item()``, no branching on values),
so they cost no device synchronisation per evaluation step; ``compute`` syncs across processes.
Scores are on the dataset's native scale; ``IAAMetrics`` also reports MAE on the common 0..10
scale (``mae_common``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, MinMetric
from torchmetrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    PearsonCorrCoef,
    SpearmanCorrCoef,
)
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from elta_lightning.losses import emd_per_sample
from elta_lightning.scales import ScoreScale

__all__ = [
    "BIN_EDGE_TOLERANCE",
    "HIGHER_IS_BETTER",
    "REGION_NAMES",
    "SHOT_NAMES",
    "EarthMoversDistance",
    "IAAMetrics",
    "IndexedCollector",
    "RegionMAE",
    "ShotBins",
    "ShotMAE",
    "ThresholdAccuracy",
    "best_so_far",
    "earth_movers_distance",
    "num_score_bins",
    "region_cuts",
    "region_mae",
    "score_bin_counts",
    "score_bins",
    "shot_mae",
    "shot_regions",
    "threshold_accuracy",
]

REGION_NAMES: tuple[str, str, str] = ("low", "mid", "high")

#: Shot regions of the DIR protocol, in the order of the codes of :func:`shot_regions` (0, 1, 2).
SHOT_NAMES: tuple[str, str, str] = ("many", "medium", "few")

#: Direction of every key that :meth:`IAAMetrics.compute` can return (checkpoint ``mode``).
HIGHER_IS_BETTER: dict[str, bool] = {
    "srcc": True,
    "plcc": True,
    "acc": True,
    "mae": False,
    "mse": False,
    "mae_low": False,
    "mae_mid": False,
    "mae_high": False,
    "mae_common": False,
    "mae_many": False,
    "mae_medium": False,
    "mae_few": False,
    "mae_balanced": False,
    "emd1": False,
    "emd2": False,
}


def _check_scores(preds: Tensor, target: Tensor) -> None:
    if preds.ndim != 1 or preds.shape != target.shape:
        raise ValueError(
            "predicted and target scores must both have shape (B,); got "
            f"{tuple(preds.shape)} and {tuple(target.shape)}"
        )


def _as_float(x: Tensor) -> Tensor:
    """Half-precision (AMP) and integer inputs are upcast so sums accumulate in float32."""
    if x.dtype in (torch.float16, torch.bfloat16) or not x.is_floating_point():
        return x.float()
    return x


# --------------------------------------------------------------------------------------------
# Threshold accuracy
# --------------------------------------------------------------------------------------------
def _threshold_accuracy_update(
    preds: Tensor, target: Tensor, threshold: float
) -> tuple[Tensor, int]:
    _check_scores(preds, target)
    correct = ((preds > threshold) == (target > threshold)).sum()
    return correct, target.numel()


def _threshold_accuracy_compute(correct: Tensor, total: Tensor | int) -> Tensor:
    return correct.float() / total


def threshold_accuracy(preds: Tensor, target: Tensor, threshold: float) -> Tensor:
    """Functional :class:`ThresholdAccuracy`."""
    return _threshold_accuracy_compute(*_threshold_accuracy_update(preds, target, threshold))


class ThresholdAccuracy(Metric):
    r"""Binary accuracy of high/low decisions: a score is *high* iff it is strictly above threshold.

    .. math:: \mathrm{acc} = \frac{1}{N}\sum_i [\,(\hat{y}_i > \tau) = (y_i > \tau)\,]

    AVA convention (threshold 5): a score of exactly 5.0 counts as low, for the prediction and
    for the target alike. States: ``correct`` and ``total`` (sum-reduced, exact under DDP).

    Example:
        >>> import torch
        >>> metric = ThresholdAccuracy(threshold=5.0)
        >>> metric.update(torch.tensor([5.0, 5.1, 4.9, 6.0]), torch.tensor([5.0, 5.0, 5.1, 7.0]))
        >>> metric.compute()
        tensor(0.5000)
    """

    is_differentiable: bool = False
    higher_is_better: bool = True
    full_state_update: bool = False
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    correct: Tensor
    total: Tensor

    def __init__(self, threshold: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = float(threshold)
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and target scores, both (B,)."""
        correct, total = _threshold_accuracy_update(preds, target, self.threshold)
        self.correct += correct
        self.total += total

    def compute(self) -> Tensor:
        """Fraction of samples on the correct side of the threshold (NaN before any sample)."""
        return _threshold_accuracy_compute(self.correct, self.total)


# --------------------------------------------------------------------------------------------
# Earth mover's distance
# --------------------------------------------------------------------------------------------
def _emd_update(pred_dist: Tensor, target_dist: Tensor, r: int) -> tuple[Tensor, int]:
    per_sample = emd_per_sample(_as_float(pred_dist), _as_float(target_dist), r=r)
    return per_sample.sum(), per_sample.numel()


def _emd_compute(sum_emd: Tensor, total: Tensor | int) -> Tensor:
    return sum_emd / total


def earth_movers_distance(pred_dist: Tensor, target_dist: Tensor, r: int = 2) -> Tensor:
    """Functional :class:`EarthMoversDistance`: mean per-sample EMD_r of (B, K) distributions."""
    return _emd_compute(*_emd_update(pred_dist, target_dist, r))


class EarthMoversDistance(Metric):
    r"""Mean per-sample earth mover's distance between score distributions (NIMA's EMD_r).

    .. math:: \mathrm{EMD}_r = \frac{1}{N}\sum_{i=1}^{N}\Big(\frac{1}{K}\sum_{k=1}^{K}
              |\mathrm{CDF}_{\hat{p}_i}(k) - \mathrm{CDF}_{p_i}(k)|^r\Big)^{1/r}

    Inputs are (B, K) probability distributions over the rating levels. States: ``sum_emd`` and
    ``total`` (sum-reduced, exact under DDP).

    Example:
        >>> import torch
        >>> metric = EarthMoversDistance(r=1)
        >>> metric.update(torch.tensor([[0.2, 0.5, 0.3]]), torch.tensor([[0.5, 0.5, 0.0]]))
        >>> metric.compute()  # mean(|[0.2, 0.7, 1.0] - [0.5, 1.0, 1.0]|)
        tensor(0.2000)
    """

    is_differentiable: bool = False
    higher_is_better: bool = False
    full_state_update: bool = False
    plot_lower_bound: float = 0.0

    sum_emd: Tensor
    total: Tensor

    def __init__(self, r: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if r < 1:
            raise ValueError(f"EMD order r must be >= 1; got {r}")
        self.r = int(r)
        self.add_state("sum_emd", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, pred_dist: Tensor, target_dist: Tensor) -> None:
        """Add a batch of predicted and target distributions, both (B, K)."""
        sum_emd, total = _emd_update(pred_dist, target_dist, self.r)
        self.sum_emd += sum_emd
        self.total += total

    def compute(self) -> Tensor:
        """Mean EMD_r over all samples seen (NaN before any sample)."""
        return _emd_compute(self.sum_emd, self.total)


# --------------------------------------------------------------------------------------------
# MAE per target region
# --------------------------------------------------------------------------------------------
def region_cuts(
    train_scores: Tensor, low_q: float = 0.2, high_q: float = 0.8
) -> tuple[float, float]:
    """Cuts of the low / mid / high regions: quantiles of the training labels (linear interp.).

    Computed once, from the training set, so every model and every evaluation set is judged on the
    same regions (ELTA reports MAE on the 0-20 / 20-80 / 80-100 % target percentile segments).

    Example:
        >>> region_cuts(torch.arange(11.0))  # 20th and 80th percentiles of 0..10
        (2.0, 8.0)
    """
    if not 0.0 <= low_q <= high_q <= 1.0:
        raise ValueError(f"need 0 <= low_q <= high_q <= 1; got low_q={low_q}, high_q={high_q}")
    scores = torch.as_tensor(train_scores).detach().reshape(-1).to("cpu", torch.float64)
    if scores.numel() == 0:
        raise ValueError("region_cuts needs at least one training score; got none")
    if not torch.isfinite(scores).all():
        raise ValueError("region_cuts: training scores contain NaN or infinite values")
    q = torch.quantile(scores, torch.tensor([low_q, high_q], dtype=torch.float64))
    return float(q[0]), float(q[1])


def _check_cuts(cuts: tuple[float, float]) -> tuple[float, float]:
    if len(cuts) != 2:
        raise ValueError(f"cuts must be (cut_low, cut_high); got {cuts!r}")
    cut_low, cut_high = float(cuts[0]), float(cuts[1])
    if not cut_low <= cut_high:
        raise ValueError(f"cuts must satisfy cut_low <= cut_high; got {cuts!r}")
    return cut_low, cut_high


def region_masks(target: Tensor, cuts: tuple[float, float]) -> Tensor:
    """(3, B) boolean masks low / mid / high; every sample is in exactly one region."""
    cut_low, cut_high = cuts
    low = target <= cut_low
    high = (target >= cut_high) & ~low  # equal cuts: a target on the cut counts as low
    mid = ~(low | high)
    return torch.stack([low, mid, high])


def _region_mae_update(
    preds: Tensor, target: Tensor, cuts: tuple[float, float]
) -> tuple[Tensor, Tensor]:
    _check_scores(preds, target)
    preds, target = _as_float(preds), _as_float(target)
    masks = region_masks(target, cuts)
    abs_error = (preds - target).abs()
    sum_abs_error = (masks * abs_error).sum(dim=1)
    return sum_abs_error, masks.sum(dim=1)


def _region_mae_compute(sum_abs_error: Tensor, total: Tensor) -> Tensor:
    return sum_abs_error / total  # 0 / 0 = NaN for an empty region


def region_mae(preds: Tensor, target: Tensor, cuts: tuple[float, float]) -> Tensor:
    """Functional :class:`RegionMAE`: (3,) MAE of the low / mid / high target regions."""
    return _region_mae_compute(*_region_mae_update(preds, target, _check_cuts(cuts)))


class RegionMAE(Metric):
    r"""Mean absolute error per region of the *target* score: low / mid / high.

    With fixed cuts :math:`c_l \le c_h` (normally :func:`region_cuts` of the training labels):

    * low: :math:`y \le c_l`;  mid: :math:`c_l < y < c_h`;  high: :math:`y \ge c_h`
      (if :math:`c_l = c_h`, a target equal to the cut is low).

    .. math:: \mathrm{MAE}_R = \frac{\sum_{i: y_i \in R} |\hat{y}_i - y_i|}{|\{i: y_i \in R\}|}

    Every sample is counted in exactly one region; none is dropped. States: per-region
    ``sum_abs_error`` and ``total`` (3,), sum-reduced, exact under DDP. ``compute`` returns a
    (3,) tensor in the order :data:`REGION_NAMES`; **a region without samples gives NaN**.

    Example:
        >>> import torch
        >>> metric = RegionMAE(cuts=(4.0, 6.0))
        >>> metric.update(torch.tensor([4.5, 5.0, 5.0, 6.5]), torch.tensor([4.0, 5.0, 5.5, 6.0]))
        >>> metric.compute()  # low {4.0}: 0.5; mid {5.0, 5.5}: (0 + 0.5) / 2; high {6.0}: 0.5
        tensor([0.5000, 0.2500, 0.5000])
    """

    is_differentiable: bool = False
    higher_is_better: bool = False
    full_state_update: bool = False
    plot_lower_bound: float = 0.0

    sum_abs_error: Tensor
    total: Tensor

    def __init__(self, cuts: tuple[float, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cuts = _check_cuts(cuts)
        self.add_state("sum_abs_error", default=torch.zeros(3), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(3, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and target scores, both (B,)."""
        sum_abs_error, total = _region_mae_update(preds, target, self.cuts)
        self.sum_abs_error += sum_abs_error
        self.total += total

    def compute(self) -> Tensor:
        """(3,) MAE of the low / mid / high regions; NaN for a region without samples."""
        return _region_mae_compute(self.sum_abs_error, self.total)

    def compute_dict(self) -> dict[str, Tensor]:
        """:meth:`compute` as ``{"low": ..., "mid": ..., "high": ...}``."""
        values = self.compute()
        return {name: values[i] for i, name in enumerate(REGION_NAMES)}


# --------------------------------------------------------------------------------------------
# MAE per shot region (DIR protocol) and balanced MAE
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Per-image predictions
# --------------------------------------------------------------------------------------------
#: What :class:`IndexedCollector` stores (floating columns in the metric's dtype, integers as
#: int64, bools as uint8), by code for the dtype exchange of an empty process.
_STORED_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.uint8,
)
_MAX_COLUMN_NDIM = 6


class IndexedCollector(Metric):
    """Rows keyed by dataset index, with named columns, gathered over all processes.

    ``IndexedCollector(["pred", "target"])`` keeps, for every evaluated or predicted image, its
    dataset ``index`` and one value per column (a score, a row of logits, a flag). States are
    ``cat`` lists, so after ``compute`` every process holds the rows of all processes.

    * ``update(index, **columns)``: ``index`` (B,) integers and EXACTLY the named columns, each a
      tensor with B rows ((B,) or (B, ...)). Floating columns are stored in the metric's dtype
      (float32 by default: half precision from AMP is upcast), integer columns as int64, bool
      columns as uint8 (gathers on every backend) and returned as bool. ``update`` never reads
      values on the host (no device sync per step).
    * ``compute()``: ``{"index": (N,) long, <column>: (N, ...)}`` sorted by index. It raises
      ``ValueError`` if an index occurs more than once: duplicates mean that a sampler padded the
      set (use ``UnrepeatedDistributedSampler``) or the same batch was fed twice.

    Shards may be uneven, and a process may have no row at all (fewer images than processes):
    before the gather, such a process learns each column's dtype and row shape from the others
    (one small extra ``all_gather``), so every process contributes tensors of the same kind.

    Example:
        >>> import torch
        >>> collector = IndexedCollector(["pred", "readable"])
        >>> collector.update(torch.tensor([2, 0]), pred=torch.tensor([5.5, 4.0]),
        ...                  readable=torch.tensor([True, False]))
        >>> collector.update(torch.tensor([1]), pred=torch.tensor([3.0]),
        ...                  readable=torch.tensor([True]))
        >>> table = collector.compute()
        >>> table["index"], table["pred"], table["readable"]
        (tensor([0, 1, 2]), tensor([4.0000, 3.0000, 5.5000]), tensor([False,  True,  True]))
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False

    index: list[Tensor]

    def __init__(self, columns: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(columns, str):
            raise TypeError(f"columns must be a sequence of names, not the string {columns!r}")
        names = tuple(columns)
        for name in names:
            if not (isinstance(name, str) and name.isidentifier()):
                raise ValueError(f"column names must be Python identifiers; got {name!r}")
            if name == "index" or hasattr(self, name):
                raise ValueError(f"column name {name!r} is taken (by the index or the metric)")
        if len(set(names)) != len(names):
            raise ValueError(f"column names must be unique; got {list(names)}")
        self.columns = names
        self.add_state("index", default=[], dist_reduce_fx="cat")
        for name in names:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, **columns: Tensor) -> None:
        """Add a batch: dataset indices (B,) (integers) and one (B, ...) tensor per column."""
        if set(columns) != set(self.columns):
            raise ValueError(
                f"update needs exactly the columns {list(self.columns)}; got {sorted(columns)}"
            )
        if index.ndim != 1:
            raise ValueError(f"index must have shape (B,); got {tuple(index.shape)}")
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"dataset indices must be integers; got dtype {index.dtype}")
        for name in self.columns:
            value = columns[name]
            if value.ndim == 0 or value.shape[0] != index.shape[0]:
                raise ValueError(
                    f"column {name!r} must have one row per index ({index.shape[0]}); got "
                    f"shape {tuple(value.shape)}"
                )
            if value.is_complex():
                raise TypeError(f"column {name!r}: complex values are not supported")
            if value.ndim > _MAX_COLUMN_NDIM:
                raise ValueError(f"column {name!r}: at most {_MAX_COLUMN_NDIM} dimensions")
        self.index.append(index.detach().long())
        for name in self.columns:
            getattr(self, name).append(self._stored(columns[name].detach()))

    def _stored(self, value: Tensor) -> Tensor:
        if value.dtype == torch.bool:
            return value.to(torch.uint8)
        if value.is_floating_point():
            return value.to(self.dtype)
        return value.long()

    def compute(self) -> dict[str, Tensor]:
        """All collected rows sorted by dataset index; raises ValueError on a repeated index."""
        index = self._gathered("index").long()  # all processes empty: torchmetrics gave float32
        order = torch.argsort(index, stable=True)
        index = index[order]
        repeated = index[1:][index[1:] == index[:-1]]
        if repeated.numel() > 0:
            shown = torch.unique(repeated)[:10].tolist()
            raise ValueError(
                f"IndexedCollector: {repeated.numel()} repeated dataset indices "
                f"(first: {shown}); the evaluation sampler padded the set (use "
                "UnrepeatedDistributedSampler) or a batch was fed twice"
            )
        table = {"index": index}
        for name in self.columns:
            value = self._gathered(name)[order]
            table[name] = value.bool() if value.dtype == torch.uint8 else value
        return table

    def _gathered(self, name: str) -> Tensor:
        value = getattr(self, name)
        if isinstance(value, list) and not value:  # nothing seen anywhere
            return torch.empty(0, dtype=self.dtype, device=self.device)
        return dim_zero_cat(value)

    def sync(
        self,
        dist_sync_fn: Callable | None = None,
        process_group: Any | None = None,
        should_sync: bool = True,
        distributed_available: Callable | None = None,
    ) -> None:
        """torchmetrics' ``sync``, after giving an empty process's states their dtype and shape.

        torchmetrics stands in an empty float32 (0,) tensor for an empty ``cat`` list; gathered
        with the int64 indices or (B, K) rows of the other processes, that fails (gloo: "Received
        data size doesn't match expected size") or hangs.
        """
        available = distributed_available or self.distributed_available_fn
        if should_sync and callable(available) and available():
            self._shape_empty_states(dist_sync_fn or gather_all_tensors, process_group)
        super().sync(dist_sync_fn, process_group, should_sync, distributed_available)

    def _shape_empty_states(self, gather: Callable, process_group: Any | None) -> None:
        names = ("index", *self.columns)
        width = 2 + _MAX_COLUMN_NDIM  # per state: dtype code, ndim, row shape (padded with -1)
        local = []
        for name in names:
            value = getattr(self, name)
            row = [-1] * width
            if isinstance(value, list) and value:
                first = value[0]
                row[:2] = [_STORED_DTYPES.index(first.dtype), first.ndim]
                row[2 : 1 + first.ndim] = first.shape[1:]
            local.append(row)
        meta = torch.tensor(local, dtype=torch.long, device=self.device)
        everyone = torch.stack(gather(meta, group=process_group or self.process_group)).tolist()
        for k, name in enumerate(names):
            value = getattr(self, name)
            if not isinstance(value, list) or value:  # this process has rows (or is synced)
                continue
            known = [rows[k] for rows in everyone if rows[k][0] >= 0]
            if known:  # else: no process has rows, torchmetrics' placeholders agree
                code, ndim, *shape = known[0]
                empty = torch.empty(0, *shape[: ndim - 1], dtype=_STORED_DTYPES[code])
                setattr(self, name, [empty.to(self.device)])


# --------------------------------------------------------------------------------------------
# The set an evaluation stage uses
# --------------------------------------------------------------------------------------------
def best_so_far(key: str) -> MaxMetric | MinMetric:
    """A torchmetrics tracker of the best value of an :class:`IAAMetrics` key over epochs.

    ``MaxMetric`` for keys where higher is better (srcc, plcc, acc), ``MinMetric`` otherwise.
    """
    if key not in HIGHER_IS_BETTER:
        raise KeyError(f"unknown metric key {key!r}; expected one of {sorted(HIGHER_IS_BETTER)}")
    return MaxMetric() if HIGHER_IS_BETTER[key] else MinMetric()


class IAAMetrics(nn.Module):
    """The metrics of one evaluation stage (val or test) of an IAA model.

    ``compute()`` returns a dict of 0-d tensors with keys

    * ``srcc``, ``plcc``: Spearman / Pearson correlation of predicted and target mean scores over
      the whole set (no logistic fit);
    * ``acc``: :class:`ThresholdAccuracy` at ``scale.threshold``;
    * ``mae``, ``mse``: on the native scale; ``mae_common = mae * scale.to_common`` (0..10 scale);
    * ``mae_low``, ``mae_mid``, ``mae_high``: :class:`RegionMAE` with ``cuts`` (NaN if empty);
    * ``emd1``, ``emd2``: :class:`EarthMoversDistance`, only when ``with_distribution``;
    * ``mae_many``, ``mae_medium``, ``mae_few``, ``mae_balanced``: :class:`ShotMAE` on the native
      scale (NaN for an empty region), only when ``shots`` (a :class:`ShotBins`) is given.

    The submetrics live in an ``nn.ModuleDict``, so Lightning moves them with the model and
    torchmetrics syncs them across processes inside ``compute()`` (all processes must call it).
    Their states are not persistent (not in checkpoints).

    Example:
        >>> import torch
        >>> from elta_lightning.scales import AVA_SCALE
        >>> metrics = IAAMetrics(AVA_SCALE, cuts=(4.5, 6.0), with_distribution=False)
        >>> metrics.update(torch.tensor([4.0, 5.5, 6.5, 7.0]), torch.tensor([4.5, 5.0, 6.0, 7.5]))
        >>> values = metrics.compute()
        >>> sorted(values)
        ['acc', 'mae', 'mae_common', 'mae_high', 'mae_low', 'mae_mid', 'mse', 'plcc', 'srcc']
        >>> values["mae"]
        tensor(0.5000)
    """

    def __init__(
        self,
        scale: ScoreScale,
        cuts: tuple[float, float],
        with_distribution: bool,
        *,
        shots: ShotBins | None = None,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.with_distribution = bool(with_distribution)
        self.shots = shots
        with warnings.catch_warnings():  # "will save all targets and predictions": intended
            warnings.filterwarnings("ignore", message=".*save all targets and predictions.*")
            srcc = SpearmanCorrCoef()
        metrics: dict[str, Metric] = {
            "srcc": srcc,
            "plcc": PearsonCorrCoef(),
            "acc": ThresholdAccuracy(scale.threshold),
            "mae": MeanAbsoluteError(),
            "mse": MeanSquaredError(),
            "region": RegionMAE(cuts),
        }
        if self.with_distribution:
            metrics["emd1"] = EarthMoversDistance(r=1)
            metrics["emd2"] = EarthMoversDistance(r=2)
        if shots is not None:
            metrics["shots"] = ShotMAE(shots.bin_width, scale.to_common, shots.shot_of_bin)
        self.metrics = nn.ModuleDict(metrics)

    @property
    def cuts(self) -> tuple[float, float]:
        return self.metrics["region"].cuts

    def update(
        self,
        pred_score: Tensor,
        target_score: Tensor,
        pred_dist: Tensor | None = None,
        target_dist: Tensor | None = None,
    ) -> None:
        """Add a batch: scores (B,) on the native scale; distributions (B, K) if configured.

        Distributions are required when ``with_distribution`` and ignored otherwise.
        """
        _check_scores(pred_score, target_score)
        if self.with_distribution:  # validate everything before any state changes
            if pred_dist is None or target_dist is None:
                raise ValueError(
                    "IAAMetrics(with_distribution=True).update needs pred_dist and target_dist"
                )
            if pred_dist.shape[0] != pred_score.shape[0]:
                raise ValueError(
                    f"pred_dist has {pred_dist.shape[0]} rows but there are "
                    f"{pred_score.shape[0]} scores"
                )
        pred_score = pred_score.detach().float()
        target_score = target_score.detach().float()
        for name in ("srcc", "plcc", "acc", "mae", "mse", "region"):
            self.metrics[name].update(pred_score, target_score)
        if self.shots is not None:
            self.metrics["shots"].update(pred_score, target_score)
        if self.with_distribution:
            pred_dist, target_dist = pred_dist.detach(), target_dist.detach()
            self.metrics["emd1"].update(pred_dist, target_dist)
            self.metrics["emd2"].update(pred_dist, target_dist)

    def compute(self) -> dict[str, Tensor]:
        """All metrics over every sample seen on every process (syncs under DDP)."""
        values = {
            name: self.metrics[name].compute() for name in ("srcc", "plcc", "acc", "mae", "mse")
        }
        values["mae_common"] = values["mae"] * self.scale.to_common
        regions = self.metrics["region"].compute()
        for i, name in enumerate(REGION_NAMES):
            values[f"mae_{name}"] = regions[i]
        if self.shots is not None:
            for name, value in self.metrics["shots"].compute().items():
                values[f"mae_{name}"] = value
        if self.with_distribution:
            values["emd1"] = self.metrics["emd1"].compute()
            values["emd2"] = self.metrics["emd2"].compute()
        return values

    def reset(self) -> None:
        """Forget all samples (call at the end of every evaluation epoch)."""
        for metric in self.metrics.values():
            metric.reset()

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Same as :meth:`update` (no per-batch values: they would cost a sync per step)."""
        self.update(*args, **kwargs)
