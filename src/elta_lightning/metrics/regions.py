"""MAE per region of the target score (low / mid / high, cut at quantiles of the training
labels): :func:`region_cuts`, :func:`region_masks`, :class:`RegionMAE` and its functional form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from elta_lightning.metrics._inputs import _as_float, _check_scores

__all__ = [
    "REGION_NAMES",
    "RegionMAE",
    "region_cuts",
    "region_mae",
    "region_masks",
]

REGION_NAMES: tuple[str, str, str] = ("low", "mid", "high")


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
