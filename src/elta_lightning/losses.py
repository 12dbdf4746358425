"""Task losses of IAA as pure tensor functions: EMD on vote distributions, MSE / L1 on scores.

Every function takes tensors and returns tensors: no Lightning, no globals, no host sync (no
``.item()``, no Python branching on tensor values), so the same code serves as a training loss
(differentiable) and inside the evaluation metrics of :mod:`elta_lightning.metrics`.

Per-sample weights (LDS, inverse-frequency re-weighting, ...) enter every loss the same way, as a
weighted mean over the batch: ``sum_i w_i * l_i / sum_i w_i``. A batch whose weights sum to zero
gives NaN (0 / 0); weights are expected to be positive.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "EMD_FORMS",
    "emd_batch_rms",
    "emd_loss",
    "emd_per_sample",
    "l1_loss",
    "mean_score",
    "mse_loss",
    "weighted_mean",
]

#: The two EMD training losses (``loss.emd``): NIMA's mean of per-sample EMD_r, and the ELTA
#: authors' code's one root-mean over the whole batch (:func:`emd_batch_rms`).
EMD_FORMS = ("per_sample", "batch_rms")


def _check_batch_weight(losses: Tensor, weight: Tensor | None) -> None:
    if weight is not None and weight.shape != losses.shape:
        raise ValueError(
            f"weight must have one value per sample, shape {tuple(losses.shape)}; "
            f"got {tuple(weight.shape)}"
        )


def weighted_mean(losses: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of per-sample ``losses`` (B,), or ``sum(w * l) / sum(w)`` with per-sample ``weight``."""
    if losses.ndim != 1:
        raise ValueError(f"per-sample losses must have shape (B,); got {tuple(losses.shape)}")
    _check_batch_weight(losses, weight)
    if weight is None:
        return losses.mean()
    weight = weight.to(losses.dtype)
    return (weight * losses).sum() / weight.sum()


def emd_per_sample(pred_dist: Tensor, target_dist: Tensor, r: int = 2) -> Tensor:
    r"""Earth mover's distance between two discrete distributions over ordered rating levels.

    NIMA's definition (Talebi & Milanfar 2018, eq. 1), per sample:

    .. math:: \mathrm{EMD}_r(p, q) = \Big(\frac{1}{K}\sum_{k=1}^{K}|\mathrm{CDF}_p(k)
              - \mathrm{CDF}_q(k)|^r\Big)^{1/r}

    Both inputs have shape (B, K) and each row is expected to be a probability distribution
    (sums to 1; this is not checked, to avoid a host sync). Computed as
    ``||CDF_p - CDF_q||_r / K^(1/r)``, which is the same value, and whose gradient is 0 (not NaN)
    where the two distributions are identical. Returns shape (B,).

    Example:
        >>> p = torch.tensor([[0.2, 0.5, 0.3]])
        >>> q = torch.tensor([[0.5, 0.5, 0.0]])
        >>> emd_per_sample(p, q, r=1)  # mean(|[0.2, 0.7, 1.0] - [0.5, 1.0, 1.0]|) = 0.6 / 3
        tensor([0.2000])
    """
    if pred_dist.ndim != 2 or pred_dist.shape != target_dist.shape:
        raise ValueError(
            "pred_dist and target_dist must both have shape (B, K); got "
            f"{tuple(pred_dist.shape)} and {tuple(target_dist.shape)}"
        )
    if r < 1:
        raise ValueError(f"EMD order r must be >= 1; got {r}")
    num_bins = pred_dist.shape[1]
    cdf_diff = torch.cumsum(pred_dist, dim=1) - torch.cumsum(target_dist, dim=1)
    return torch.linalg.vector_norm(cdf_diff, ord=r, dim=1) / num_bins ** (1.0 / r)


def emd_loss(pred: Tensor, target: Tensor, r: int = 2, weight: Tensor | None = None) -> Tensor:
    """Mean over samples of the per-sample EMD_r (NIMA), optionally weighted per sample.

    Note: this is the mean of per-sample distances, not one root-mean-square over the whole batch
    (``sqrt(mean over samples and bins of d^r)``), which some implementations (the ELTA authors'
    code among them) use; the two differ whenever the samples' distances differ.

    Example:
        >>> p = torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.5, 0.0]])
        >>> q = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
        >>> emd_loss(p, q, r=2)  # (sqrt(0.06) + 0) / 2
        tensor(0.1225)
    """
    return weighted_mean(emd_per_sample(pred, target, r=r), weight)


def emd_batch_rms(pred: Tensor, target: Tensor, r: int = 2, weight: Tensor | None = None) -> Tensor:
    r"""The ELTA authors' EMD loss: ONE r-th-power mean over the whole batch and all bins.

    .. math:: L = \Big(\frac{1}{B K}\sum_{i=1}^{B}\sum_{k=1}^{K}|\mathrm{CDF}_{p_i}(k)
              - \mathrm{CDF}_{q_i}(k)|^r\Big)^{1/r}
              = \Big(\frac{1}{B}\sum_i \mathrm{EMD}_r(p_i, q_i)^r\Big)^{1/r}

    (their code: ``torch.sqrt(torch.mean((cdf_p - cdf_q) ** 2))`` over the (B, K) batch, r = 2).
    With per-sample ``weight`` the mean over samples is ``sum_i w_i (.) / sum_i w_i``. Unlike
    :func:`emd_loss` (the mean of per-sample distances), its gradient weights each sample by
    its own distance relative to the batch's (``EMD_i^(r-1) / L^(r-1)``): hard samples count
    more. Computed as a vector norm, so the gradient is 0 (not NaN) where every distance is 0.

    Example:
        >>> p = torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.5, 0.0]])
        >>> q = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
        >>> emd_batch_rms(p, q, r=2)  # sqrt((0.3^2 + 0.3^2 + 0 + 0 + 0 + 0) / 6) = sqrt(0.03)
        tensor(0.1732)
    """
    per_sample = emd_per_sample(pred, target, r=r)  # validates shapes and r
    _check_batch_weight(per_sample, weight)
    if weight is None:
        share = torch.full_like(per_sample, 1.0 / per_sample.shape[0])
    else:
        weight = weight.to(per_sample.dtype)
        share = weight / weight.sum()
    # (sum_i share_i * EMD_i^r)^(1/r) = || share_i^(1/r) * EMD_i ||_r (finite gradient at 0)
    return torch.linalg.vector_norm(share ** (1.0 / r) * per_sample, ord=r)


def _per_sample(errors: Tensor) -> Tensor:
    """Reduce elementwise errors (B, ...) to one value per sample (B,) by the mean."""
    if errors.ndim == 0:
        raise ValueError("losses need a batch dimension; got a 0-d tensor")
    return errors.reshape(errors.shape[0], -1).mean(dim=1)


def mse_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error on scores (B,) (or (B, ...) averaged per sample), optionally weighted.

    Example:
        >>> mse_loss(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))  # (1 + 4) / 2
        tensor(2.5000)
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    return weighted_mean(_per_sample((pred - target) ** 2), weight)


def l1_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error on scores (B,) (or (B, ...) averaged per sample), optionally weighted.

    Example:
        >>> l1_loss(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0]))  # (1 + 2) / 2
        tensor(1.5000)
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    return weighted_mean(_per_sample((pred - target).abs()), weight)


def mean_score(dist: Tensor, levels: Tensor) -> Tensor:
    """Mean score of distributions (B, K) over rating ``levels`` (K,): ``sum_k p_k * level_k``.

    Example:
        >>> mean_score(torch.tensor([[0.5, 0.5, 0.0]]), torch.tensor([1.0, 2.0, 3.0]))
        tensor([1.5000])
    """
    if dist.ndim != 2 or levels.ndim != 1 or dist.shape[1] != levels.shape[0]:
        raise ValueError(
            "dist must have shape (B, K) and levels shape (K,); got "
            f"{tuple(dist.shape)} and {tuple(levels.shape)}"
        )
    return dist @ levels.to(device=dist.device, dtype=dist.dtype)
