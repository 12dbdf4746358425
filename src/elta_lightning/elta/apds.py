"""APDS: adaptive pseudo-label distribution sharpening (ELTA's pseudo-label filter).

After a first training run the model predicts an unlabeled set: logits ``z_i`` over ``K`` rating
levels and the predicted mean score ``s_i = sum_k level_k softmax(z_i)_k``. With ``s_bar`` the
mean of the ``s_i`` over the WHOLE unlabeled set, each prediction is sharpened with its own
temperature ``T_i = exp(-beta |s_bar - s_i|)``::

    p_i = softmax( z_i * exp(beta * |s_bar - s_i|) )

so predictions in the tails (far from ``s_bar``) are sharpened more, and sample ``i`` is kept as
a pseudo-label when ``max_k p_i[k] > threshold``. Sharpening is only the confidence filter: the
label stored for a kept sample is, by default (ELTA 1.0), the UNSHARPENED distribution.

Score scale: ``beta`` multiplies score distances, and those distances are computed from the
``levels`` the caller passes. Pass levels on the COMMON 0..10 scale (native levels times the
dataset's ``to_common`` factor) for ``beta`` to mean the same thing on every dataset.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["APDSResult", "MAX_LOG_SHARPENING", "sharpen_logits", "select_pseudo_labels"]

#: Cap on ``beta * |s_bar - s_i|`` so the sharpening factor stays finite in float32
#: (``exp(50) ~ 5e21``; past that the sharpened distribution is one-hot to float precision).
MAX_LOG_SHARPENING = 50.0


class APDSResult(NamedTuple):
    """Outcome of :func:`select_pseudo_labels` for ``N`` predictions over ``K`` levels.

    ``selected`` (N,) bool: kept as pseudo-labels (may be all False: an empty selection is a
    valid result and the caller decides what to do); ``sharpened`` and ``unsharpened`` (N, K)
    distributions; ``scores`` (N,) predicted mean scores of the UNSHARPENED distributions, on the
    scale of the ``levels`` passed.
    """

    selected: torch.Tensor
    sharpened: torch.Tensor
    unsharpened: torch.Tensor
    scores: torch.Tensor


def _check_beta(beta: float) -> None:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(
            f"beta must be a finite number >= 0 (0 disables sharpening; the authors use 1.0 to "
            f"1.25 on the common 0..10 score scale), got {beta!r}"
        )


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
    if not 0 < threshold < 1:
        raise ValueError(
            "threshold must lie strictly between 0 and 1 (it bounds the largest probability of "
            f"the sharpened distribution; the authors use 0.70 to 0.90), got {threshold!r}"
        )


def _float_logits(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def sharpen_logits(
    logits: torch.Tensor,
    scores: torch.Tensor,
    beta: float,
    reference_score: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """APDS-sharpened distributions (N, K) from logits (N, K) and predicted scores (N,).

    ``p_i = softmax(z_i * exp(beta * |s_bar - s_i|))``, i.e. temperature
    ``T_i = exp(-beta |s_bar - s_i|)``. ``s_bar`` is the mean of ``scores`` over the set passed,
    unless ``reference_score`` is given (use it when predicting the unlabeled set in chunks, with
    the mean over the whole set). Scores on the common 0..10 scale for the usual ``beta``.
    ``beta * |s_bar - s_i|`` is capped at ``MAX_LOG_SHARPENING`` to stay finite.
    """
    _check_beta(beta)
    z = _float_logits(logits)
    if scores.dim() != 1 or scores.shape[0] != z.shape[0]:
        raise ValueError(
            "scores must have shape (N,) matching logits (N, K), got "
            f"{tuple(scores.shape)} and {tuple(logits.shape)}"
        )
    s = scores.to(z.dtype)
    if reference_score is None:
        s_bar = s.mean()
    else:
        s_bar = torch.as_tensor(reference_score, dtype=z.dtype, device=z.device)
    log_factor = (beta * (s_bar - s).abs()).clamp(max=MAX_LOG_SHARPENING)
    return torch.softmax(z * log_factor.exp().unsqueeze(1), dim=1)


def select_pseudo_labels(
    logits: torch.Tensor,
    levels: torch.Tensor,
    beta: float,
    threshold: float,
    *,
    reference_score: float | torch.Tensor | None = None,
) -> APDSResult:
    """Sharpen predictions (logits (N, K), rating ``levels`` (K,)) and select confident ones.

    ``scores = sum_k levels_k softmax(z)_k`` (UNSHARPENED; the ``|s_bar - s_i|`` of the
    sharpening uses these, so pass ``levels`` on the common 0..10 scale for the usual ``beta``),
    ``sharpened = sharpen_logits(logits, scores, beta, reference_score)`` and
    ``selected = max_k sharpened > threshold`` (strict). An empty selection is a valid result.
    """
    _check_beta(beta)
    _check_threshold(threshold)
    z = _float_logits(logits)
    if levels.dim() != 1 or levels.shape[0] != z.shape[1]:
        raise ValueError(
            "levels must have shape (K,) matching logits (N, K), got "
            f"{tuple(levels.shape)} and {tuple(logits.shape)}"
        )
    unsharpened = torch.softmax(z, dim=1)
    scores = unsharpened @ levels.to(device=z.device, dtype=z.dtype)
    sharpened = sharpen_logits(z, scores, beta, reference_score=reference_score)
    selected = sharpened.amax(dim=1) > threshold
    return APDSResult(
        selected=selected, sharpened=sharpened, unsharpened=unsharpened, scores=scores
    )
