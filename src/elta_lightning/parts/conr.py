"""ConR (Keramati et al., ICLR 2024) as a part: ``method.parts=[conr]``. A contrastive auxiliary
loss on two more augmented views of every training image (the DataModule yields them because
this part asks for ``views_needed = 2``): views of similar labels attract, views whose labels are
far apart but whose predictions are close repel, pushed harder the farther their labels.
Total loss: task loss + ``beta * L_ConR``. The maths is :mod:`elta_lightning.longtail.conr`.

Cost: the two views go through the backbone too (about 3x the forward and backward compute of a
plain step, as the reference). Predictions of the views are detached (reference). The views are
the first B samples of the batch (before any mixup appended samples); their labels, weights and
predictions are those of their image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from elta_lightning.errors import ConfigError, require
from elta_lightning.longtail.conr import conr_loss
from elta_lightning.parts.base import Part, TrainStep
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class ConRConfig:
    """ConR. ``beta``: loss weight; the reference's 4.0 balances an L1 loss on ages (about 7),
    our EMD / unit-scale MSE task losses are 50-100 times smaller (measured: ConR's term is about
    150 times the EMD at initialisation with beta 4), so the default is 0.1 (tune with a sweep).
    ``omega``: label distance below which two
    samples are positives, on the common 0..10 scale (reference 1 year on ages 0..100 -> 0.1,
    one default bin). ``push_e``: strength of the label-distance-dependent push,
    ``exp(e |dy|)`` (reference 0.01 per year -> 0.1 per common-scale point).
    ``temperature``: 0.07 (the reference's hard-coded value)."""

    beta: float = 0.1
    omega: float = 0.1
    push_e: float = 0.1
    temperature: float = 0.07

    def __post_init__(self) -> None:
        require(self.beta > 0, "method.conr.beta", "> 0", self.beta)
        require(self.omega > 0, "method.conr.omega", "> 0", self.omega)
        require(self.push_e >= 0, "method.conr.push_e", ">= 0", self.push_e)
        require(self.temperature > 0, "method.conr.temperature", "> 0", self.temperature)


@register_part
class ConR(Part):
    """ConR on the pooled features of two augmented views of each image."""

    name = "conr"
    config_class = ConRConfig
    views_needed = 2

    def auxiliary_loss(
        self, module: IAAModule, step: TrainStep, output: torch.Tensor
    ) -> torch.Tensor:
        if step.views is None:
            raise ConfigError(
                "conr needs two augmented views of each training image, but the batch has none: "
                "train through `elta train` (it asks the DataModule for them), or set "
                "datamodule.train_views = 2 before setup"
            )
        size, count = step.views.shape[:2]
        views = step.views.flatten(0, 1)  # (B * V, 3, H, W), views of one image adjacent
        features = module.backbone(views)
        preds = module.common_scores(module.head(features)).detach()
        labels = step.scores[:size].repeat_interleave(count, output_size=size * count)
        weights = step.weights[:size].repeat_interleave(count, output_size=size * count)
        cfg = self.config
        loss = conr_loss(features, labels, preds, weights, cfg.omega, cfg.push_e, cfg.temperature)
        return cfg.beta * loss
