"""Cost-sensitive re-weighting (INV, SQINV) with optional label distribution smoothing (LDS).

Per-bin weights from the training label histogram ``n_b`` (Yang et al., ICML 2021; reference
``_prepare_weights`` and ``get_lds_kernel_window`` of YyzHarry/imbalanced-regression)::

    v_b = sqrt(n_b)                   (SQINV)
    v_b = clip(n_b, lo, hi)           (INV, reference clip (5, 1000))
    v~  = v (*) k                     (LDS: zero-padded convolution with a peak-1 kernel k)
    w_b = c / v~_b,   c such that  sum_b n_b w_b = N = sum_b n_b

so the mean weight over the training samples is 1. Note the order of the reference: the square
root (or the clip) comes first, then the smoothing ("SQINV + LDS" smooths square-root counts).

Bins are on the COMMON 0..10 score scale with a fixed width ``w`` (default 0.1):
``b = clamp(floor(s / w), 0, num_bins - 1)``, ``num_bins = round(10 / w)``; the caller computes the
counts and bin indices. The kernel size and ``sigma`` are in bins: the reference's ks 5 / sigma 2
(one bin = one year of age) is 0.5 / 0.2 score points with 0.1-wide bins.

Empty bins: the reference only ever looks up bins that hold a training sample. Here every bin gets
a weight, because pseudo-labelled or validation samples may land in a bin with no training
sample. For such a bin (``n_b = 0``) the weight is ``min(c / v~_b, w_max)`` where ``w_max`` is the
largest weight of a bin that holds training samples (``c / 0`` counts as infinite, so a bin out of
the kernel's reach gets exactly ``w_max``): an empty bin counts as rare as the rarest training bin,
never rarer, and its weight is finite and positive. Bins with training samples get exactly the
reference's weights, and the normalisation only involves them.

:func:`lds_kernel` and :func:`bin_weights` run once at set-up (numpy / scipy, host side);
:func:`sample_weights` is the per-step lookup (a gather, no host sync).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import convolve1d, gaussian_filter1d
from scipy.signal.windows import triang

__all__ = ["bin_weights", "lds_kernel", "sample_weights"]

KernelKind = Literal["gaussian", "triang", "laplace"]
KERNEL_KINDS = ("gaussian", "triang", "laplace")


def _check_kernel_args(kind: str, size: int, sigma: float) -> None:
    if kind not in KERNEL_KINDS:
        raise ValueError(f"kernel kind must be one of {KERNEL_KINDS}, got {kind!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"kernel size must be an odd integer >= 1, got {size!r}")
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd (centred on a bin), got {size}")
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"kernel sigma must be > 0, got {sigma!r}")


def lds_kernel(kind: KernelKind, size: int, sigma: float) -> np.ndarray:
    """LDS kernel window of odd length ``size``, normalised to PEAK 1 (not sum 1), float64.

    Reproduces the reference ``get_lds_kernel_window`` exactly:

    - ``gaussian``: ``scipy.ndimage.gaussian_filter1d`` of a unit impulse of length ``size``
      (scipy's default ``mode='reflect'``, truncate 4 sigma), divided by its max. With a short
      window the reflected tails fold back, so ks 5 / sigma 2 is almost flat,
      [0.858, 0.946, 1, 0.946, 0.858], NOT the analytic exp(-d^2 / 2 sigma^2)
      [0.607, 0.882, 1, 0.882, 0.607]; published numbers used the former.
    - ``triang``: ``scipy.signal.windows.triang(size)`` (``sigma`` unused but still checked).
    - ``laplace``: ``exp(-|x| / sigma) / (2 sigma)`` on ``x = -(size-1)/2 .. (size-1)/2``, divided
      by its max (so ``exp(-|x| / sigma)``).

    ``size`` and ``sigma`` are in bins.

    Example:
        >>> lds_kernel("triang", 5, 1.0)
        array([0.33333333, 0.66666667, 1.        , 0.66666667, 0.33333333])
        >>> lds_kernel("gaussian", 5, 2.0).round(3)
        array([0.858, 0.946, 1.   , 0.946, 0.858])
    """
    _check_kernel_args(kind, size, sigma)
    half = (size - 1) // 2
    if kind == "gaussian":
        impulse = np.zeros(size, dtype=np.float64)
        impulse[half] = 1.0
        window = gaussian_filter1d(impulse, sigma=sigma)
    elif kind == "triang":
        window = triang(size)
    else:
        x = np.arange(-half, half + 1, dtype=np.float64)
        window = np.exp(-np.abs(x) / sigma) / (2.0 * sigma)
    return np.asarray(window / window.max(), dtype=np.float64)


def _as_float64_vector(
    values: np.ndarray | Sequence[float] | torch.Tensor, name: str
) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    return array


def bin_weights(
    counts: np.ndarray | Sequence[float] | torch.Tensor,
    kind: Literal["inv", "sqinv"],
    lds: np.ndarray | Sequence[float] | torch.Tensor | None = None,
    clip: tuple[float | None, float | None] | None = (5.0, 1000.0),
) -> torch.Tensor:
    """Per-bin INV / SQINV weights (optionally LDS-smoothed): counts (num_bins,) -> (num_bins,).

    ``counts``: training samples per bin (non-negative; need not be integers). ``kind``:
    ``"sqinv"`` uses ``sqrt(n_b)``, ``"inv"`` uses ``clip(n_b, lo, hi)`` with ``clip = (lo, hi)``
    (``clip=None``: no clip; either bound may be ``None``: no bound on that side; ``clip`` is
    ignored for ``"sqinv"``, as in the reference). ``lds``: a kernel of odd length
    (e.g. from :func:`lds_kernel`), applied with ``scipy.ndimage.convolve1d(mode='constant')``,
    i.e. zero padding beyond the first and last bins; ``None`` for no smoothing.

    Returns a float64 CPU tensor normalised so that ``sum_b n_b w_b = sum_b n_b`` (mean weight 1
    over the training samples). Bins holding training samples get the reference's weight; an empty
    bin gets ``min(its own 1 / v~_b, largest training-bin weight)`` (see the module docstring), so
    every weight is finite and positive.

    Example:
        >>> # sqrt([4, 0, 1, 9]) = [2, 0, 1, 3] -> 1/v = [1/2, -, 1, 1/3]; sum n/v = 6, N = 14
        >>> bin_weights([4, 0, 1, 9], "sqinv")  # 14/6 * [1/2, (max) 1, 1, 1/3]
        tensor([1.1667, 2.3333, 2.3333, 0.7778], dtype=torch.float64)
    """
    if kind not in ("inv", "sqinv"):
        raise ValueError(f"kind must be 'inv' or 'sqinv', got {kind!r}")
    n = _as_float64_vector(counts, "counts")
    if (n < 0).any():
        raise ValueError("counts must be non-negative")
    total = n.sum()
    if total <= 0:
        raise ValueError("counts are all zero: no training samples to weight by")

    if kind == "sqinv":
        value = np.sqrt(n)
    else:
        lo, hi = (None, None) if clip is None else clip
        lo_f = 0.0 if lo is None else float(lo)
        hi_f = np.inf if hi is None else float(hi)
        if not (0 <= lo_f <= hi_f and hi_f > 0):
            raise ValueError(f"clip must satisfy 0 <= lo <= hi and hi > 0, got {clip!r}")
        value = np.clip(n, lo_f, hi_f)

    if lds is not None:
        kernel = _as_float64_vector(lds, "lds kernel")
        if kernel.size % 2 != 1:
            raise ValueError(f"lds kernel length must be odd, got {kernel.size}")
        if (kernel < 0).any() or kernel[kernel.size // 2] <= 0:
            raise ValueError("lds kernel must be non-negative with a positive centre")
        value = convolve1d(value, kernel, mode="constant", cval=0.0)

    has_samples = n > 0
    positive = value > 0
    inverse = np.divide(1.0, value, out=np.full_like(value, np.inf), where=positive)
    # A bin with samples has value > 0: sqrt(n) > 0, clip(n, lo, hi) >= min(n, hi) > 0, and the
    # kernel centre is positive.
    w_max = inverse[has_samples].max()
    weights = np.where(has_samples, inverse, np.minimum(inverse, w_max))
    weights = weights * (total / np.sum(n * weights))
    return torch.from_numpy(weights)


def sample_weights(weight_table: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Per-sample weights: ``weight_table[bins]``, table (num_bins,) and bins (B,) -> (B,).

    Training-step function: a gather on ``weight_table``'s device, no host sync. ``bins`` must be
    integer bin indices in ``[0, num_bins)`` (not checked, which would need a sync; the framework's
    binning clamps). Keep the table on the batch's device (e.g. a registered buffer).

    Example:
        >>> sample_weights(torch.tensor([0.5, 1.0, 2.0]), torch.tensor([2, 0, 2]))
        tensor([2.0000, 0.5000, 2.0000])
    """
    if weight_table.ndim != 1:
        raise ValueError(
            f"weight_table must have shape (num_bins,), got {tuple(weight_table.shape)}"
        )
    if bins.ndim != 1:
        raise ValueError(f"bins must have shape (B,), got {tuple(bins.shape)}")
    if bins.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"bins must be integer (long) bin indices, got {bins.dtype}")
    if bins.device != weight_table.device:
        raise ValueError(
            f"weight_table is on {weight_table.device} but bins on {bins.device}; "
            "move the table to the batch's device once (e.g. register it as a buffer)"
        )
    return weight_table.index_select(0, bins)
