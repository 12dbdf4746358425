"""Feature distribution smoothing (FDS) as pure tensor functions.

FDS (Yang et al., ICML 2021; reference ``FDS`` in YyzHarry/imbalanced-regression agedb-dir/fds.py
and ``calibrate_mean_var`` in utils.py) keeps per-label-bin statistics of the feature ``z`` fed to
the final regressor, smooths them over neighbouring bins, and re-colours each training feature::

    mu_b, var_b    = per-bin mean and (diagonal) variance of z, EMA over epochs (momentum m)
    mu~, var~      = k (*) mu,  k (*) var      (over the bin axis, reflect padding, sum(k) = 1)
    z'             = (z - mu_b) * sqrt(clamp(var~_b / var_b, 0.1, 10)) + mu~_b

with ``b`` the bin of the sample's label. The nn.Module / callback wrapper owns the buffers and
the schedule; these functions only compute, out of place:

- :func:`fds_kernel`, :func:`smooth_over_bins`: the sum-1 kernel and the smoothing over bins;
- :func:`accumulate_bin_sums` (per step, no host sync): per-bin count, sum z, sum z^2 in float64,
  which the caller all-reduces (SUM) across processes;
- :func:`moments_from_sums`, :func:`ema_update`: statistics from those sums and the EMA;
- :func:`calibrate` (per step, no host sync): the re-colouring, built out of place by gathering
  each sample's bin statistics (the reference's in-place masked assignment broke autograd,
  issues #6 / #43).

Bins are on the COMMON 0..10 score scale with a fixed width (default 0.1), computed by the caller;
kernel size and sigma are in bins. All functions return new tensors, never views of their inputs,
so the caller decides explicitly whether "last epoch" buffers alias the running ones (the
reference aliases them by accident).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from elta_lightning.longtail.reweighting import KernelKind, lds_kernel

__all__ = [
    "VAR_SUM_EPS",
    "accumulate_bin_sums",
    "calibrate",
    "ema_update",
    "fds_kernel",
    "moments_from_sums",
    "smooth_over_bins",
]

#: A bin whose variances sum to less than this is left uncalibrated (reference threshold).
VAR_SUM_EPS = 1e-10


def fds_kernel(kind: KernelKind, size: int, sigma: float) -> torch.Tensor:
    """FDS kernel: :func:`~elta_lightning.longtail.reweighting.lds_kernel` normalised to SUM 1.

    Float64 on the CPU (:func:`smooth_over_bins` casts it to the statistics' dtype and device).
    The reference builds its Gaussian impulse in float32; the difference is below 1e-7.

    Example:
        >>> fds_kernel("gaussian", 5, 2.0)
        tensor([0.1863, 0.2052, 0.2170, 0.2052, 0.1863], dtype=torch.float64)
    """
    window = lds_kernel(kind, size, sigma)
    return torch.from_numpy(window / window.sum())


def _reflect_indices(num_bins: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of the bin axis extended by ``pad`` on each side, mirrored about the end bins."""
    positions = torch.arange(-pad, num_bins + pad, device=device)
    if num_bins == 1:
        return torch.zeros_like(positions)
    period = 2 * (num_bins - 1)
    positions = positions.remainder(period)
    return torch.where(positions >= num_bins, period - positions, positions)


def smooth_over_bins(stats: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Smooth per-bin statistics over the bin axis: (num_bins, D) and kernel (k,) -> (num_bins, D).

    ``out[b] = sum_j kernel[j] * stats[reflect(b + j - (k-1)/2)]`` (a cross-correlation, as the
    reference's ``F.conv1d`` after ``F.pad(mode='reflect')``; FDS kernels are symmetric anyway).
    Reflection mirrors about the end bins without repeating them (``-1 -> 1``,
    ``num_bins -> num_bins - 2``) and is repeated as often as needed, so it equals
    ``F.pad(mode='reflect')`` whenever that is defined (``(k-1)/2 < num_bins``) and extends it to
    fewer bins than the kernel's half-width, where the reference would raise; a single bin is
    scaled by ``sum(kernel)``. ``k`` must be odd. Computed in ``stats``' dtype.

    Example:
        >>> smooth_over_bins(torch.tensor([[0.0], [3.0], [6.0]]), torch.tensor([0.25, 0.5, 0.25]))
        tensor([[1.5000],
                [3.0000],
                [4.5000]])
    """
    if stats.ndim != 2 or stats.shape[0] == 0:
        raise ValueError(f"stats must have shape (num_bins, D), got {tuple(stats.shape)}")
    if kernel.ndim != 1 or kernel.shape[0] % 2 != 1:
        raise ValueError(f"kernel must be 1-D of odd length, got shape {tuple(kernel.shape)}")
    num_bins, size = stats.shape[0], kernel.shape[0]
    pad = (size - 1) // 2
    padded = stats.index_select(0, _reflect_indices(num_bins, pad, stats.device))
    weight = kernel.to(dtype=stats.dtype, device=stats.device).view(1, 1, size)
    # (num_bins + 2 pad, D) -> (D, 1, num_bins + 2 pad): every feature dimension is one channel.
    smoothed = F.conv1d(padded.transpose(0, 1).unsqueeze(1), weight)
    return smoothed.squeeze(1).transpose(0, 1).contiguous()


def _check_features_and_bins(features: torch.Tensor, bins: torch.Tensor) -> None:
    if features.ndim != 2:
        raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
    if bins.ndim != 1 or bins.shape[0] != features.shape[0]:
        raise ValueError(
            f"bins must have shape (B,) matching features (B, D), got {tuple(bins.shape)} and "
            f"{tuple(features.shape)}"
        )
    if bins.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"bins must be integer (long) bin indices, got {bins.dtype}")


def accumulate_bin_sums(
    features: torch.Tensor, bins: torch.Tensor, num_bins: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin count (num_bins,), sum of z and sum of z^2 (num_bins, D), all float64.

    Features (B, D) are detached (statistics carry no gradient). ``bins`` (B,) are integer bin
    indices in ``[0, num_bins)`` (not checked: that needs a host sync). No host sync; the caller
    adds these over steps and all-reduces them (SUM) across processes before
    :func:`moments_from_sums`. (``index_add`` on CUDA adds in a non-deterministic order; float64
    keeps that below any visible effect.)

    Example:
        >>> count, total, total_sq = accumulate_bin_sums(
        ...     torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 2]), num_bins=3)
        >>> count.tolist(), total.squeeze(1).tolist(), total_sq.squeeze(1).tolist()
        ([2.0, 0.0, 1.0], [4.0, 0.0, 5.0], [10.0, 0.0, 25.0])
    """
    _check_features_and_bins(features, bins)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    z = features.detach().to(torch.float64)
    dim = z.shape[1]
    count = torch.zeros(num_bins, dtype=torch.float64, device=z.device).index_add(
        0, bins, torch.ones(bins.shape[0], dtype=torch.float64, device=z.device)
    )
    zeros = torch.zeros(num_bins, dim, dtype=torch.float64, device=z.device)
    return count, zeros.index_add(0, bins, z), zeros.index_add(0, bins, z * z)


def moments_from_sums(
    count: torch.Tensor, total: torch.Tensor, total_sq: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-bin mean, variance and presence from (count, sum z, sum z^2).

    ``count`` (num_bins,), ``total`` and ``total_sq`` (num_bins, D) -> ``mean``, ``var``
    (num_bins, D) in the sums' dtype (float64 from :func:`accumulate_bin_sums`) and ``present``
    (num_bins,) bool = ``count > 0``. The variance is unbiased, ``(sum z^2 - n mean^2) / (n - 1)``,
    and biased (divide by ``n``, i.e. 0) for a bin of one sample, as the reference's
    ``torch.var(unbiased=n != 1)``; it is clamped at 0 against rounding. Absent bins get mean 0 and
    variance 1 (the reference's buffer initial values); :func:`ema_update` ignores them anyway.
    No host sync.

    Example:
        >>> mean, var, present = moments_from_sums(
        ...     torch.tensor([2.0, 0.0, 1.0]), torch.tensor([[4.0], [0.0], [5.0]]),
        ...     torch.tensor([[10.0], [0.0], [25.0]]))
        >>> mean.squeeze(1), var.squeeze(1), present
        (tensor([2., 0., 5.]), tensor([2., 1., 0.]), tensor([ True, False,  True]))
    """
    if count.ndim != 1:
        raise ValueError(f"count must have shape (num_bins,), got {tuple(count.shape)}")
    if total.ndim != 2 or total.shape[0] != count.shape[0] or total_sq.shape != total.shape:
        raise ValueError(
            "sum and sum_sq must both have shape (num_bins, D) matching count, got "
            f"{tuple(total.shape)}, {tuple(total_sq.shape)} and {tuple(count.shape)}"
        )
    n = count.to(total.dtype).unsqueeze(1)
    present = count > 0
    mean = total / n.clamp(min=1)
    divisor = torch.where(n > 1, n - 1, n).clamp(min=1)
    var = ((total_sq - n * mean * mean) / divisor).clamp(min=0)
    present_col = present.unsqueeze(1)
    mean = torch.where(present_col, mean, torch.zeros_like(mean))
    var = torch.where(present_col, var, torch.ones_like(var))
    return mean, var, present


def ema_update(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    present: torch.Tensor,
    momentum: float,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA of the per-bin statistics: returns new (running_mean, running_var), (num_bins, D).

    For a present bin ``running <- (1 - m) * current + m * running`` with ``m = momentum``
    (reference 0.9), or ``m = 0`` (take the current statistics) when ``first`` (the reference's
    ``epoch == start_update``); absent bins keep their running values. The reference's cumulative
    average for ``momentum=None`` is not offered. Out of place, no host sync; the result has the
    running statistics' dtype.

    Example:
        >>> new_mean, _ = ema_update(torch.tensor([[10.0], [10.0]]), torch.ones(2, 1),
        ...     torch.tensor([[0.0], [0.0]]), torch.ones(2, 1), torch.tensor([True, False]),
        ...     momentum=0.9, first=False)
        >>> new_mean.squeeze(1)  # 0.1 * 0 + 0.9 * 10; the absent bin keeps 10
        tensor([ 9., 10.])
    """
    if running_mean.ndim != 2:
        raise ValueError(
            f"running_mean must have shape (num_bins, D), got {tuple(running_mean.shape)}"
        )
    for name, tensor in (("running_var", running_var), ("mean", mean), ("var", var)):
        if tensor.shape != running_mean.shape:
            raise ValueError(
                f"{name} must have shape {tuple(running_mean.shape)} like running_mean, got "
                f"{tuple(tensor.shape)}"
            )
    if present.shape != running_mean.shape[:1]:
        raise ValueError(
            f"present must have shape ({running_mean.shape[0]},), got {tuple(present.shape)}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
    m = 0.0 if first else float(momentum)
    keep = present.to(torch.bool).unsqueeze(1)
    new_mean = (1 - m) * mean.to(running_mean.dtype) + m * running_mean
    new_var = (1 - m) * var.to(running_var.dtype) + m * running_var
    return torch.where(keep, new_mean, running_mean), torch.where(keep, new_var, running_var)


def calibrate(
    features: torch.Tensor,
    bins: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    smoothed_mean: torch.Tensor,
    smoothed_var: torch.Tensor,
    clip: tuple[float, float] = (0.1, 10.0),
) -> torch.Tensor:
    """Re-colour features (B, D) with their bins' statistics: returns z' (B, D), out of place.

    For sample ``i`` in bin ``b = bins[i]`` and dimension ``d``::

        z'[i, d] = (z[i, d] - mean[b, d]) * sqrt(clamp(smoothed_var[b, d] / var[b, d], *clip))
                   + smoothed_mean[b, d]

    except ``z'[i, d] = z[i, d]`` exactly (no scaling and no mean shift) where ``var[b, d] == 0``,
    and for every dimension of a bin whose variances sum to less than ``VAR_SUM_EPS`` (1e-10):
    the reference's ``calibrate_mean_var`` rules. Implemented with per-sample gathers and
    ``torch.where`` (no branching on values, no host sync, no in-place write); the gradient flows
    to ``features`` (factor ``sqrt(clamp(...))``, or 1 where unchanged), not to the statistics'
    masks. ``bins`` must lie in ``[0, num_bins)`` (not checked). Computed in at least float32
    and returned in ``features``' dtype.

    Example:
        >>> calibrate(torch.tensor([[3.0, 3.0]]), torch.tensor([0]),
        ...     mean=torch.tensor([[1.0, 1.0]]), var=torch.tensor([[1.0, 0.0]]),
        ...     smoothed_mean=torch.tensor([[2.0, 2.0]]), smoothed_var=torch.tensor([[4.0, 4.0]]))
        tensor([[6., 3.]])
    """
    _check_features_and_bins(features, bins)
    stats = {"mean": mean, "var": var, "smoothed_mean": smoothed_mean, "smoothed_var": smoothed_var}
    for name, tensor in stats.items():
        if tensor.ndim != 2 or tensor.shape != mean.shape or tensor.shape[1] != features.shape[1]:
            raise ValueError(
                f"{name} must have shape (num_bins, D) with D = {features.shape[1]} and all four "
                f"statistics alike, got {tuple(tensor.shape)} (mean {tuple(mean.shape)})"
            )
    lo, hi = float(clip[0]), float(clip[1])
    if not 0 < lo <= hi:
        raise ValueError(f"clip must satisfy 0 < lo <= hi, got {clip!r}")

    dtype = torch.promote_types(features.dtype, torch.float32)
    bin_ok = var.sum(dim=1) >= VAR_SUM_EPS  # (num_bins,), in the statistics' own precision

    def rows(table: torch.Tensor) -> torch.Tensor:
        return table.to(device=features.device).index_select(0, bins).to(dtype)

    # The variance ratio is formed in the statistics' precision (if wider), then clamped.
    ratio_dtype = torch.promote_types(dtype, torch.promote_types(var.dtype, smoothed_var.dtype))
    var_rows = var.to(device=features.device).index_select(0, bins).to(ratio_dtype)
    nonzero = var_rows != 0
    valid = nonzero & bin_ok.to(features.device).index_select(0, bins).unsqueeze(1)
    svar_rows = smoothed_var.to(device=features.device).index_select(0, bins).to(ratio_dtype)
    safe_var = torch.where(nonzero, var_rows, torch.ones_like(var_rows))
    ratio = (svar_rows / safe_var).clamp(lo, hi).to(dtype)
    z = features.to(dtype)
    recoloured = (z - rows(mean)) * ratio.sqrt() + rows(smoothed_mean)
    return torch.where(valid, recoloured, z).to(features.dtype)
