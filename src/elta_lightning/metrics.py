"""IAA evaluation metrics on torchmetrics, exact under DDP.

What an evaluation stage reports (see DESIGN.md, "Metrics"): SRCC, PLCC, binary accuracy at the
dataset's threshold, MAE, MSE, EMD (r = 1, 2) where vote distributions exist, and MAE per region
of the target score (low / mid / high, cut at the training labels' 20th and 80th percentiles).
Every number is computed over the whole evaluation set and is the same on 1 and N processes:

* additive metrics keep ``sum`` and ``count`` states (``dist_reduce_fx="sum"``), so the DDP
  reduction is exact (up to float32 summation order);
* SRCC keeps every prediction (torchmetrics ``SpearmanCorrCoef``, ``cat`` states) and PLCC merges
  per-process moments (torchmetrics ``PearsonCorrCoef``);
* the caller must not feed duplicates: evaluate with
  ``lightning.pytorch.overrides.distributed.UnrepeatedDistributedSampler`` (Lightning's default
  ``DistributedSampler`` pads the set with repeated samples). :class:`PredictionCollector`
  raises on a repeated dataset index, which catches padding.

``update`` methods never read tensor values on the host (no ``.item()``, no branching on values),
so they cost no device synchronisation per evaluation step; ``compute`` syncs across processes.
Scores are on the dataset's native scale; ``IAAMetrics`` also reports MAE on the common 0..10
scale (``mae_common``).
"""

from __future__ import annotations

import warnings
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

from elta_lightning.losses import emd_per_sample
from elta_lightning.scales import ScoreScale

__all__ = [
    "HIGHER_IS_BETTER",
    "REGION_NAMES",
    "EarthMoversDistance",
    "IAAMetrics",
    "PredictionCollector",
    "RegionMAE",
    "ThresholdAccuracy",
    "best_so_far",
    "earth_movers_distance",
    "region_cuts",
    "region_mae",
    "threshold_accuracy",
]

REGION_NAMES: tuple[str, str, str] = ("low", "mid", "high")

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
# Per-image predictions
# --------------------------------------------------------------------------------------------
class PredictionCollector(Metric):
    """Collects (dataset index, predicted score, target score) of every evaluated image.

    States are ``cat`` lists, so after ``compute`` every process holds the whole evaluation set
    (for a per-image predictions CSV). ``compute`` returns
    ``{"index": (N,) long, "pred": (N,), "target": (N,)}`` sorted by dataset index, and raises
    ``ValueError`` if an index occurs more than once: duplicates mean that a sampler padded the
    evaluation set (use ``UnrepeatedDistributedSampler``) or the same batch was fed twice.

    Example:
        >>> import torch
        >>> collector = PredictionCollector()
        >>> collector.update(torch.tensor([2, 0]), torch.tensor([5.5, 4.0]), torch.tensor([6, 4.5]))
        >>> collector.update(torch.tensor([1]), torch.tensor([3.0]), torch.tensor([2.5]))
        >>> collector.compute()["index"]
        tensor([0, 1, 2])
    """

    is_differentiable: bool = False
    higher_is_better: bool | None = None
    full_state_update: bool = False

    index: list[Tensor]
    pred: list[Tensor]
    target: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("pred", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, pred: Tensor, target: Tensor) -> None:
        """Add a batch: dataset indices (B,) (integers), predicted and target scores (B,)."""
        if index.ndim != 1 or index.shape != pred.shape or index.shape != target.shape:
            raise ValueError(
                "index, pred and target must all have shape (B,); got "
                f"{tuple(index.shape)}, {tuple(pred.shape)}, {tuple(target.shape)}"
            )
        if index.is_floating_point() or index.is_complex():
            raise TypeError(f"dataset indices must be integers; got dtype {index.dtype}")
        self.index.append(index.long())
        self.pred.append(_as_float(pred).to(self.dtype))
        self.target.append(_as_float(target).to(self.dtype))

    def compute(self) -> dict[str, Tensor]:
        """All collected rows sorted by dataset index; raises ValueError on a repeated index."""
        index = dim_zero_cat(self.index).long()  # an empty rank contributes float32 (torchmetrics)
        pred = dim_zero_cat(self.pred)
        target = dim_zero_cat(self.target)
        order = torch.argsort(index, stable=True)
        index, pred, target = index[order], pred[order], target[order]
        repeated = index[1:][index[1:] == index[:-1]]
        if repeated.numel() > 0:
            shown = torch.unique(repeated)[:10].tolist()
            raise ValueError(
                f"PredictionCollector: {repeated.numel()} repeated dataset indices "
                f"(first: {shown}); the evaluation sampler padded the set (use "
                "UnrepeatedDistributedSampler) or a batch was fed twice"
            )
        return {"index": index, "pred": pred, "target": target}


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
    * ``emd1``, ``emd2``: :class:`EarthMoversDistance`, only when ``with_distribution``.

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
        self, scale: ScoreScale, cuts: tuple[float, float], with_distribution: bool
    ) -> None:
        super().__init__()
        self.scale = scale
        self.with_distribution = bool(with_distribution)
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
