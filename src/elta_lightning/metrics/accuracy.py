"""Binary accuracy of high/low decisions at the dataset's threshold: :class:`ThresholdAccuracy`
and its functional form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from elta_lightning.metrics._inputs import _check_scores

__all__ = ["ThresholdAccuracy", "threshold_accuracy"]


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
