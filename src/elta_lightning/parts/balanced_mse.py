"""Balanced MSE (Ren et al., CVPR 2022) as a part: ``method.parts=[balanced_mse]``. It replaces
the task loss with a balanced likelihood of the predicted mean score on the common 0..10 scale:
BMC (batch Monte-Carlo, the default), GAI (a Gaussian mixture fitted to the training labels) or
BNI (the training label histogram). The maths is :mod:`elta_lightning.longtail.balanced_mse`.

GAI's mixture is fitted to the training labels at their bin centres (the statistics every
process shares and a checkpoint keeps), deterministically. The noise scale sigma is a learnable
``nn.Parameter`` of :class:`NoiseScale`, registered on the model, so DDP averages its gradient
and checkpoints keep it; it trains in its own optimiser group with ``sigma_lr``, or stays fixed
with ``fix_sigma=true``.

With the distribution head the loss acts on the distribution's mean score only (the shape of the
predicted distribution is not supervised); the reference setting is the score head
(``model.head=score``). Sample weights (LDS, ...) do not enter, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from elta_lightning.errors import require
from elta_lightning.longtail.balanced_mse import (
    bin_prior,
    bmc_loss,
    bni_loss,
    fit_label_gmm,
    gai_loss,
)
from elta_lightning.parts.base import Part, PartContext, TrainStep, gather_batch
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class BalancedMSEConfig:
    """Balanced MSE. ``variant``: bmc | gai | bni. ``init_sigma`` on the common 0..10 scale: the
    reference's 1.0 on ages (0..100) re-expressed by the range ratio gives 0.1; ``sigma_lr`` its
    own learning rate (the reference's 1e-2 per age year re-expressed: 1e-3, the same relative
    step of sigma under Adam); ``fix_sigma`` keeps it constant (the authors' advice for
    a new task: fix it and raise it from a small value). ``components``: GAI's mixture size
    (reference 8). ``gather`` (BMC under DDP): negatives from the targets of every process
    (the reference's DataParallel batch), not only this process's batch."""

    variant: Literal["bmc", "gai", "bni"] = "bmc"
    init_sigma: float = 0.1
    sigma_lr: float = 1e-3
    fix_sigma: bool = False
    components: int = 8
    gather: bool = False

    def __post_init__(self) -> None:
        require(self.init_sigma > 0, "method.balanced_mse.init_sigma", "> 0", self.init_sigma)
        require(self.sigma_lr > 0, "method.balanced_mse.sigma_lr", "> 0", self.sigma_lr)
        require(self.components >= 1, "method.balanced_mse.components", ">= 1", self.components)


class NoiseScale(nn.Module):
    """The learnable noise scale sigma, and the label prior of GAI / BNI as buffers."""

    def __init__(self, init_sigma: float, fixed: bool) -> None:
        super().__init__()
        self.sigma = nn.Parameter(torch.tensor(float(init_sigma)), requires_grad=not fixed)

    @property
    def variance(self) -> torch.Tensor:
        return self.sigma.square()


@register_part
class BalancedMSE(Part):
    """Balanced MSE replacing the task loss (BMC, GAI or BNI)."""

    name = "balanced_mse"
    config_class = BalancedMSEConfig
    replaces_task_loss = True

    def __init__(self, config: BalancedMSEConfig, context: PartContext) -> None:
        super().__init__(config, context)
        state = NoiseScale(config.init_sigma, config.fix_sigma)
        stats = context.stats
        if config.variant == "bni":
            state.register_buffer("centres", stats.centres())
            state.register_buffer("prior", bin_prior(stats.counts_tensor()).float())
        elif config.variant == "gai":
            binned = np.repeat(stats.centres().double().numpy(), stats.counts)  # bin centres
            weights, means, variances = fit_label_gmm(binned, config.components, seed=0)
            state.register_buffer("gmm_weights", torch.as_tensor(weights).float())
            state.register_buffer("gmm_means", torch.as_tensor(means).float())
            state.register_buffer("gmm_vars", torch.as_tensor(variances).float())
        self.state = state

    def task_loss(self, module: IAAModule, step: TrainStep, output: torch.Tensor) -> torch.Tensor:
        pred, target = module.common_scores(output), step.scores
        state, variance = self.state, self.state.variance
        if self.config.variant == "bni":
            return bni_loss(pred, target, variance, state.centres, state.prior)
        if self.config.variant == "gai":
            return gai_loss(
                pred, target, variance, state.gmm_weights, state.gmm_means, state.gmm_vars
            )
        if self.config.gather:
            (all_targets,) = gather_batch(module, target.detach())
            offset = module.global_rank * target.shape[0]
            return bmc_loss(pred, target, variance, all_targets=all_targets, offset=offset)
        return bmc_loss(pred, target, variance)

    def param_groups(self) -> list[dict[str, Any]]:
        if self.config.fix_sigma:
            return []
        return [{"params": [self.state.sigma], "lr": self.config.sigma_lr, "weight_decay": 0.0}]
