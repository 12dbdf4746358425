"""Input checks and dtype handling shared by the metrics of :mod:`elta_lightning.metrics`."""

from __future__ import annotations

import torch
from torch import Tensor


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
