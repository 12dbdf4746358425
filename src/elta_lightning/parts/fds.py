"""FDS (feature distribution smoothing, Yang et al. ICML 2021) as a part: ``method.parts=[fds]``.

Per label bin it keeps running statistics (mean, variance) of the pooled features and their
kernel-smoothed version over neighbouring bins; in training steps from epoch ``start_smooth`` on,
each feature is calibrated from its bin's statistics to the smoothed ones before the head::

    z' = (z - mu_b) * sqrt(clamp(var~_b / var_b, 0.1, 10)) + mu~_b

Statistics: the features of the epoch's training steps (of the real samples, taken before any
calibration) are summed per bin (count, sum, sum of squares, float64) as they pass; at epoch end
the sums are all-reduced over processes (SUM), so every process updates the same buffers
exactly; the epoch's per-bin moments enter the running ones with momentum 0.9 (the first update
takes them as they are), and the smoothed statistics are recomputed. All statistics are buffers
of :class:`FDSState`: in checkpoints, on the device.

Deviations from the reference (stated, deliberate):
- No extra forward pass over the training set per epoch (which doubles the forward cost and,
  in train mode, moves BatchNorm statistics): the statistics come from the epoch's own training
  forwards, so they mix features of slightly different weights within an epoch.
- No buffer aliasing: the reference's ``running_*_last_epoch = running_*`` made calibration use
  raw statistics one epoch newer than the smoothed ones (and a resumed run behave differently);
  here both come from the same update, so smoothing starts with epoch ``start_smooth`` (the
  reference's first real smoothing is one epoch later).
- Calibration is out of place (the reference's in-place masked assignment breaks autograd).
List ``fds`` before ``tfa`` or ``cmixup`` in ``method.parts``: parts act in list order, and FDS
should see the backbone's features, not mixed ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch import nn

from elta_lightning.errors import require
from elta_lightning.longtail.fds import (
    accumulate_bin_sums,
    calibrate,
    ema_update,
    fds_kernel,
    moments_from_sums,
    smooth_over_bins,
)
from elta_lightning.parts.base import Part, PartContext, TrainStep
from elta_lightning.parts.registry import register_part

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule


@dataclass
class FDSConfig:
    """Feature distribution smoothing. Kernel ``size`` / ``sigma`` in label bins (README of the
    reference: gaussian 5 / 2, carried over as for LDS); ``momentum`` of the running statistics;
    ``start_update`` first epoch whose features are collected, ``start_smooth`` first epoch
    that is calibrated; variance ratio clipped to [clip_min, clip_max]."""

    kernel: Literal["gaussian", "triang", "laplace"] = "gaussian"
    size: int = 5
    sigma: float = 2.0
    momentum: float = 0.9
    start_update: int = 0
    start_smooth: int = 1
    clip_min: float = 0.1
    clip_max: float = 10.0

    def __post_init__(self) -> None:
        require(
            self.size >= 1 and self.size % 2 == 1,
            "method.fds.size",
            "an odd number >= 1",
            self.size,
        )
        require(self.sigma > 0, "method.fds.sigma", "> 0", self.sigma)
        require(0 <= self.momentum < 1, "method.fds.momentum", "in [0, 1)", self.momentum)
        require(self.start_update >= 0, "method.fds.start_update", ">= 0", self.start_update)
        ok = self.start_smooth > self.start_update
        require(
            ok,
            "method.fds.start_smooth",
            f"> start_update ({self.start_update})",
            self.start_smooth,
        )
        ok = 0 < self.clip_min <= 1 <= self.clip_max
        require(ok, "method.fds.clip_min", "in (0, 1] with clip_max >= 1", self.clip_min)


class FDSState(nn.Module):
    """Per-bin feature statistics (num_bins, D): running, smoothed, and this epoch's sums."""

    def __init__(self, num_bins: int, dim: int, kernel: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel.float(), persistent=False)
        self.register_buffer("running_mean", torch.zeros(num_bins, dim))
        self.register_buffer("running_var", torch.ones(num_bins, dim))
        self.register_buffer("smoothed_mean", torch.zeros(num_bins, dim))
        self.register_buffer("smoothed_var", torch.ones(num_bins, dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("epoch_count", torch.zeros(num_bins, dtype=torch.float64))
        self.register_buffer("epoch_sum", torch.zeros(num_bins, dim, dtype=torch.float64))
        self.register_buffer("epoch_sum_sq", torch.zeros(num_bins, dim, dtype=torch.float64))

    def add(self, features: torch.Tensor, bins: torch.Tensor) -> None:
        """Add a batch of raw features (B, D) with their label bins (B,) to the epoch's sums."""
        count, total, total_sq = accumulate_bin_sums(
            features.detach(), bins, self.epoch_count.shape[0]
        )
        self.epoch_count += count
        self.epoch_sum += total
        self.epoch_sum_sq += total_sq

    def reduce_epoch(self) -> None:
        """Sum the epoch's sums over all processes (exact: float64 SUM), in place."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for tensor in (self.epoch_count, self.epoch_sum, self.epoch_sum_sq):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def update(self, momentum: float) -> None:
        """Fold the (reduced) epoch's moments into the running statistics, re-smooth, reset."""
        mean, var, present = moments_from_sums(self.epoch_count, self.epoch_sum, self.epoch_sum_sq)
        first = int(self.updates) == 0
        new_mean, new_var = ema_update(
            self.running_mean, self.running_var, mean.float(), var.float(), present, momentum, first
        )
        self.running_mean.copy_(new_mean)
        self.running_var.copy_(new_var)
        self.smoothed_mean.copy_(smooth_over_bins(new_mean, self.kernel))
        self.smoothed_var.copy_(smooth_over_bins(new_var, self.kernel))
        self.updates += 1
        for tensor in (self.epoch_count, self.epoch_sum, self.epoch_sum_sq):
            tensor.zero_()


@register_part
class FeatureDistributionSmoothing(Part):
    """FDS on the pooled features, bins from the run's label statistics."""

    name = "fds"
    config_class = FDSConfig
    rank_local_buffers = ("epoch_count", "epoch_sum", "epoch_sum_sq")

    def __init__(self, config: FDSConfig, context: PartContext) -> None:
        super().__init__(config, context)
        kernel = fds_kernel(config.kernel, config.size, config.sigma)
        self.state = FDSState(context.stats.num_bins, context.feature_dim, kernel)

    def transform_features(self, module: IAAModule, step: TrainStep) -> TrainStep:
        epoch = module.current_epoch
        bins = module.label_stats.bin_index(step.scores)
        if epoch >= self.config.start_update:
            self.state.add(step.features, bins)
        if epoch < self.config.start_smooth:
            return step
        state = self.state
        calibrated = calibrate(
            step.features,
            bins,
            state.running_mean,
            state.running_var,
            state.smoothed_mean,
            state.smoothed_var,
            (self.config.clip_min, self.config.clip_max),
        )
        return step.with_(features=calibrated)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if pl_module.current_epoch >= self.config.start_update:
            self.state.reduce_epoch()
            self.state.update(self.config.momentum)
