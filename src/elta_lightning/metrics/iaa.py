"""The set of metrics an evaluation stage uses (:class:`IAAMetrics`), the direction of each key
it reports (:data:`HIGHER_IS_BETTER`) and trackers of the best value (:func:`best_so_far`)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, MinMetric
from torchmetrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    PearsonCorrCoef,
    SpearmanCorrCoef,
)

from elta_lightning.metrics._inputs import _check_scores
from elta_lightning.metrics.accuracy import ThresholdAccuracy
from elta_lightning.metrics.emd import EarthMoversDistance
from elta_lightning.metrics.regions import REGION_NAMES, RegionMAE
from elta_lightning.metrics.shots import ShotBins, ShotMAE
from elta_lightning.scales import ScoreScale

__all__ = ["HIGHER_IS_BETTER", "IAAMetrics", "best_so_far"]

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
