"""Earth mover's distance between score distributions (NIMA's EMD_r): :class:`EarthMoversDistance`
and its functional form."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from elta_lightning.losses import emd_per_sample
from elta_lightning.metrics._inputs import _as_float

__all__ = ["EarthMoversDistance", "earth_movers_distance"]


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
