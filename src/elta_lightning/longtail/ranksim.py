"""RankSim (Gong, Mori, Tung, ICML 2022): align the ranking of feature similarities with the
ranking of label similarities, batch-wise.

For the M samples kept in a batch (features z, labels y)::

    S^z_ij = cos(z_i, z_j)                 S^y_ij = -|y_i - y_j|
    r_i(s) = (rank of s_j within row i, largest = 0, + 1) / M      (normalised ranks)
    L_RankSim = sum_i mean_j (r_i(S^z)_j - r_i(S^y)_j)^2          (summed over rows!)

Ranking is piecewise constant; its gradient is the blackbox-differentiation estimate of
Vlastelica et al. (ICLR 2020): with upstream gradient ``g`` and interpolation strength ``lambda``,
``grad_s = -(r(s) - r(s + lambda g)) / (lambda + 1e-8)``. The reference trains with
``L_task + gamma * L_RankSim``, ``gamma = 100`` and ``lambda = 2`` (AgeDB-DIR and IMDB-WIKI-DIR;
argparse defaults 0 and 1.0). As the loss is a SUM over the kept rows of per-row means, it grows
with the batch size (and with the number of distinct label bins in it), so ``gamma`` is tied to
the batch size used (reference: 64 on AgeDB, 256 on IMDB-WIKI, one DataParallel batch).

De-duplication: the reference keeps one random sample per distinct label (to reduce ties and
boost rare labels), which needs dynamic shapes. Here the kept set is a mask ``keep`` (B,)
(:func:`dedup_mask` draws it, on BINNED labels, since continuous MOS values almost never tie):
excluded columns get similarity ``-inf`` so they rank after every kept column of each row, the
ranks are normalised by ``M = keep.sum()`` (a tensor), and excluded rows are multiplied out. This
equals the reference's computation on the subset exactly, forward and backward, with no
host-device sync. Ties within a row (e.g. two labels at the same distance) are broken by sample
index (stable sort); the reference's ``argsort(argsort(s).flip(1))`` breaks them by an
unspecified (non-stable sort) order.

Scale: labels on the common 0..10 scale by convention; only their order matters. For DDP the
caller gathers features (with gradient) and labels from all ranks first, as the reference saw the
whole DataParallel batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "REFERENCE_GAMMA",
    "REFERENCE_INTERPOLATION_LAMBDA",
    "BlackboxRank",
    "blackbox_rank",
    "rank_descending",
    "rank_normalised",
    "ranksim_loss",
    "dedup_mask",
]

#: Weight of RankSim in the total loss in the reference's AgeDB / IMDB-WIKI runs.
REFERENCE_GAMMA = 100.0

#: Blackbox-differentiation interpolation strength of the reference's AgeDB / IMDB-WIKI runs.
REFERENCE_INTERPOLATION_LAMBDA = 2.0

#: Added to ``lambda`` in the backward, as in the reference.
_LAMBDA_EPS = 1e-8


def rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Integer rank of each entry within its row of scores (R, N), largest = 0 -> (R, N) long.

    Ties go to the lower column index first (stable sort).

    Example:
        >>> rank_descending(torch.tensor([[3.0, 1.0, 2.0], [2.0, 2.0, 1.0]])).tolist()
        [[0, 2, 1], [0, 1, 2]]
    """
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    return torch.argsort(order, dim=1)


def rank_normalised(scores: torch.Tensor, count: int | torch.Tensor | None = None) -> torch.Tensor:
    """``(rank_descending(scores) + 1) / count`` -> (R, N) float; ``count`` defaults to N.

    ``count`` may be a tensor (the number of kept columns, when excluded columns rank last), so
    no value is read back. The result has the dtype of the scores, at least float32.
    """
    dtype = torch.promote_types(scores.dtype, torch.float32)
    count = scores.shape[1] if count is None else count
    return (rank_descending(scores) + 1).to(dtype) / count


class BlackboxRank(torch.autograd.Function):
    """Normalised descending ranks of each row, with the blackbox-differentiation backward.

    ``apply(scores (R, N), interpolation_lambda: float, count: int | Tensor | None)``: forward
    :func:`rank_normalised`; backward ``-(r(s) - r(s + lambda g)) / (lambda + 1e-8)`` for all rows
    at once (the reference ranks one row per call). Entries equal to ``-inf`` stay last in both
    rankings and get gradient 0.
    """

    @staticmethod
    def forward(ctx, scores, interpolation_lambda, count):  # type: ignore[override]
        count = scores.shape[1] if count is None else count
        ranks = rank_normalised(scores, count)
        ctx.interpolation_lambda = interpolation_lambda
        if isinstance(count, torch.Tensor):
            ctx.save_for_backward(scores, ranks, count)
            ctx.count = None
        else:
            ctx.save_for_backward(scores, ranks)
            ctx.count = count
        return ranks

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        if ctx.count is None:
            scores, ranks, count = ctx.saved_tensors
        else:
            (scores, ranks), count = ctx.saved_tensors, ctx.count
        lam = ctx.interpolation_lambda
        perturbed = rank_normalised(scores + lam * grad_output.to(scores.dtype), count)
        grad_scores = -(ranks - perturbed) / (lam + _LAMBDA_EPS)
        return grad_scores.to(scores.dtype), None, None


def _check_lambda(interpolation_lambda: float) -> None:
    if not (isinstance(interpolation_lambda, (int, float)) and interpolation_lambda > 0):
        raise ValueError(f"interpolation_lambda must be a number > 0, got {interpolation_lambda!r}")
    if not math.isfinite(interpolation_lambda):
        raise ValueError(f"interpolation_lambda must be finite, got {interpolation_lambda!r}")


def blackbox_rank(
    scores: torch.Tensor, interpolation_lambda: float, count: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Differentiable (blackbox) normalised ranks of each row of scores (R, N) -> (R, N).

    Example:
        >>> (3 * blackbox_rank(torch.tensor([[0.2, 0.9, 0.5]]), 2.0)).tolist()
        [[3.0, 1.0, 2.0]]
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (R, N), got {tuple(scores.shape)}")
    _check_lambda(interpolation_lambda)
    return BlackboxRank.apply(scores, float(interpolation_lambda), count)


def ranksim_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    interpolation_lambda: float,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """RankSim loss of features (B, D) and labels (B,) over the samples in ``keep`` -> scalar.

    ``sum over kept rows i of mean over kept columns j of (r^z_ij - r^y_ij)^2`` with
    ``r^z = blackbox ranks of cos(z_i, z_j)`` and ``r^y = ranks of -|y_i - y_j|`` (see the module
    docstring). ``keep`` (B,) bool (default: all) selects the reference's de-duplicated subset
    without dynamic shapes; excluded samples get no gradient. The sum over rows makes the loss
    scale with the number of kept samples. Cosines in float32 or wider, also under autocast.

    Example:
        >>> # Feature angles 0, 10, 30 degrees follow labels 0, 1, 3: same orders, loss 0.
        >>> a = torch.deg2rad(torch.tensor([0.0, 10.0, 30.0]))
        >>> z = torch.stack([a.cos(), a.sin()], dim=1)
        >>> ranksim_loss(z, torch.tensor([0.0, 1.0, 3.0]), 2.0).item()
        0.0
    """
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(
            f"features must have shape (B, D) with B >= 1, got {tuple(features.shape)}"
        )
    batch = features.shape[0]
    if labels.shape != (batch,):
        raise ValueError(
            "labels must have shape (B,) matching features (B, D), got "
            f"{tuple(labels.shape)} and {tuple(features.shape)}"
        )
    if keep is not None and (keep.shape != (batch,) or keep.dtype != torch.bool):
        raise ValueError(f"keep must be a (B,) bool mask, got {keep.dtype} {tuple(keep.shape)}")
    _check_lambda(interpolation_lambda)
    dtype = torch.promote_types(features.dtype, torch.float32)
    f = F.normalize(features.to(dtype), dim=1)
    device_type = features.device.type
    if torch.amp.is_autocast_available(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            cosine = f @ f.transpose(0, 1)
    else:
        cosine = f @ f.transpose(0, 1)
    y = labels.to(dtype)
    label_similarity = -(y.unsqueeze(1) - y.unsqueeze(0)).abs()
    if keep is None:
        keep = torch.ones(batch, dtype=torch.bool, device=features.device)
    kept_columns = keep.unsqueeze(0)
    minus_inf = torch.full((), -math.inf, dtype=dtype, device=features.device)
    # Excluded columns rank after every kept one (finite similarities), in both rankings.
    cosine = torch.where(kept_columns, cosine, minus_inf)
    label_similarity = torch.where(kept_columns, label_similarity, minus_inf)
    count = keep.sum().clamp_min(1)
    feature_ranks = BlackboxRank.apply(cosine, float(interpolation_lambda), count)
    label_ranks = rank_normalised(label_similarity, count)
    weight = keep.to(dtype)
    pair_weight = weight.unsqueeze(1) * weight.unsqueeze(0)
    return ((feature_ranks - label_ranks).square() * pair_weight).sum() / count


def dedup_mask(bins: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random sample per distinct value of bins (B,) -> keep mask (B,) bool.

    Each sample draws a priority ``torch.rand(generator=generator)``; a sample is kept iff no
    sample of the same bin has a higher priority (equal priorities: the lower index wins), so
    every bin keeps exactly one sample, uniformly at random. A B x B comparison, no host sync.
    ``generator`` must live on the device of ``bins`` (seed it per rank under DDP).

    Example:
        >>> keep = dedup_mask(torch.tensor([3, 5, 3, 3]), torch.Generator().manual_seed(0))
        >>> keep.tolist()[1], int(keep[[0, 2, 3]].sum())
        (True, 1)
    """
    if bins.dim() != 1:
        raise ValueError(f"bins must have shape (B,), got {tuple(bins.shape)}")
    batch = bins.shape[0]
    priority = torch.rand(batch, generator=generator, device=bins.device)
    index = torch.arange(batch, device=bins.device)
    same_bin = bins.unsqueeze(1) == bins.unsqueeze(0)
    p_i, p_j = priority.unsqueeze(1), priority.unsqueeze(0)
    # beats[i, j]: j outranks i in the same bin (higher priority, or equal and lower index).
    beats = same_bin & ((p_j > p_i) | ((p_j == p_i) & (index.unsqueeze(0) < index.unsqueeze(1))))
    return ~beats.any(dim=1)
