"""C-Mixup (Yao et al., NeurIPS 2022) as a part: ``method.parts=[cmixup]``. Mixup whose partner
of each sample is drawn with probability falling with the distance of their labels, so mixed
samples stay plausible; mixing happens on the images (``level=inputs``, before the backbone) or
on the pooled features (``level=features``, manifold mixup). Images or features, targets,
scores and loss weights are mixed with one ``lam ~ Beta(alpha, alpha)`` per batch, and the
mixed batch replaces the batch (reference).

Partners are drawn inside the batch, with a kernel over the run's label bins
(``P(j | i) ~ exp(-(c_bi - c_bj)^2 / (2 bandwidth^2))``): the reference's N x N probability
matrix over the data set (impossible for AVA's 230k images) is never built. The maths is
:mod:`elta_lightning.longtail.cmixup`. Randomness: a generator seeded from the run's seed and
the process's rank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from elta_lightning.errors import require
from elta_lightning.longtail.cmixup import bin_kernel, mix, sample_lambda, sample_partners
from elta_lightning.parts.base import Part, PartContext, TrainStep
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class CMixupConfig:
    """C-Mixup. ``level``: inputs (images) or features. ``bandwidth`` of the label kernel on the
    common 0..10 scale (the reference tunes it per data set; 0.5 is about two thirds of AVA's
    score spread). ``alpha`` of the Beta(alpha, alpha) mixing weight (reference: 2.0 for tabular
    data, 0.2 for EchoNet images)."""

    level: Literal["inputs", "features"] = "features"
    bandwidth: float = 0.5
    alpha: float = 2.0

    def __post_init__(self) -> None:
        require(self.bandwidth > 0, "method.cmixup.bandwidth", "> 0", self.bandwidth)
        require(self.alpha > 0, "method.cmixup.alpha", "> 0", self.alpha)


class BinKernel(nn.Module):
    """The partner kernel over label bins (num_bins, num_bins), derived from the statistics."""

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.float(), persistent=False)


@register_part
class CMixup(Part):
    """C-Mixup with in-batch partners drawn by label-bin distance."""

    name = "cmixup"
    random_stream = 2
    config_class = CMixupConfig

    def __init__(self, config: CMixupConfig, context: PartContext) -> None:
        super().__init__(config, context)
        self.state = BinKernel(bin_kernel(context.stats.centres(), config.bandwidth))

    def _mixed(self, module: IAAModule, step: TrainStep, field: str) -> TrainStep:
        values = getattr(step, field)
        generator = self.generator(values.device, module.global_rank)
        bins = module.label_stats.bin_index(step.scores)
        partner = sample_partners(bins, self.state.kernel, generator)
        lam = sample_lambda(self.config.alpha, generator, values.device)
        return step.with_(
            **{field: mix(values, values[partner], lam.to(values.dtype))},
            targets=mix(step.targets, step.targets[partner], lam.to(step.targets.dtype)),
            scores=mix(step.scores, step.scores[partner], lam.to(step.scores.dtype)),
            weights=mix(step.weights, step.weights[partner], lam.to(step.weights.dtype)),
        )

    def transform_inputs(self, module: IAAModule, step: TrainStep) -> TrainStep:
        return self._mixed(module, step, "images") if self.config.level == "inputs" else step

    def transform_features(self, module: IAAModule, step: TrainStep) -> TrainStep:
        return self._mixed(module, step, "features") if self.config.level == "features" else step
