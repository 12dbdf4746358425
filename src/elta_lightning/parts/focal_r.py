"""Focal-R (Yang et al., ICML 2021) as a part: ``method.parts=[focal_r]``. It replaces the task
loss with the per-sample task loss (EMD or MSE) scaled by a focal factor of the sample's error,
``(2 sigmoid(beta |e|) - 1)^gamma`` (or ``tanh(beta |e|)^gamma``), where ``e`` is the predicted
minus the true mean score on the common 0..10 scale: well-predicted samples count less. The
factor is not detached, as in the reference. Sample weights (LDS, ...) apply. The maths is
:mod:`elta_lightning.longtail.focal`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from elta_lightning.errors import require
from elta_lightning.longtail.focal import focal_loss
from elta_lightning.parts.base import Part, TrainStep
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class FocalRConfig:
    """Focal-R. ``beta`` on the common 0..10 scale: the reference's 0.2 on ages (0..100) times the
    range ratio 10 gives 2.0; ``gamma`` 1 (reference)."""

    beta: float = 2.0
    gamma: float = 1.0
    activation: Literal["sigmoid", "tanh"] = "sigmoid"

    def __post_init__(self) -> None:
        require(self.beta > 0, "method.focal_r.beta", "> 0", self.beta)
        require(self.gamma > 0, "method.focal_r.gamma", "> 0", self.gamma)


@register_part
class FocalR(Part):
    """Focal-R replacing the task loss."""

    name = "focal_r"
    config_class = FocalRConfig
    replaces_task_loss = True

    def task_loss(self, module: IAAModule, step: TrainStep, output: torch.Tensor) -> torch.Tensor:
        per_sample = module.task_loss_per_sample(output, step)
        abs_error = (module.common_scores(output) - step.scores).abs()
        cfg = self.config
        return focal_loss(per_sample, abs_error, cfg.beta, cfg.gamma, cfg.activation, step.weights)
