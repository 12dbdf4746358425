"""Focal-R: an error-aware modulation of any per-sample regression loss.

Focal-R (Yang et al., ICML 2021; reference ``weighted_focal_l1_loss`` / ``weighted_focal_mse_loss``
in YyzHarry/imbalanced-regression agedb-dir/loss.py) scales each sample's loss by a factor that
grows with its absolute error ``|e|``, so that well-fitted samples count less::

    f(e) = (2 * sigmoid(beta * |e|) - 1) ** gamma     (activation "sigmoid", the default)
    f(e) = tanh(beta * |e|) ** gamma                   (activation "tanh")
    L    = sum_i w_i * l_i * f(e_i) / sum_i w_i         (w_i = 1 without weights)

``f(0) = 0`` and ``f -> 1`` for large errors (the code's ``2 sigmoid - 1`` form, not the paper's
``sigmoid``). Generalised to our heads: ``l_i`` is any per-sample loss (L1 or squared error on
the score, EMD on the vote distribution) and ``e_i`` the error of the predicted mean score.

Score scale: scores are on the COMMON 0..10 scale. The factor depends on ``beta * |e|`` only, so a
reference ``beta`` carries over by the ratio of label ranges: the reference's ``beta = 0.2`` on
ages (errors in years, labels ~0..100) becomes ``beta = 2.0`` on 0..10 scores (ratio 10), the
default here; ``gamma = 1`` unchanged. (STS-B's ``beta = 20`` on 0..5 would be 10.)
"""

from __future__ import annotations

from typing import Literal

import torch

from elta_lightning.losses import weighted_mean

__all__ = ["DEFAULT_BETA", "DEFAULT_GAMMA", "focal_factor", "focal_loss"]

#: Reference beta 0.2 on ages (0..100) re-expressed for 0..10 scores.
DEFAULT_BETA = 2.0
#: Reference gamma.
DEFAULT_GAMMA = 1.0

Activation = Literal["sigmoid", "tanh"]


def focal_factor(
    abs_error: torch.Tensor,
    beta: float = DEFAULT_BETA,
    gamma: float = DEFAULT_GAMMA,
    activation: Activation = "sigmoid",
) -> torch.Tensor:
    """Focal-R factor per sample: ``(2 sigmoid(beta |e|) - 1) ** gamma`` or ``tanh(...) ** gamma``.

    ``abs_error`` (B,) on the 0..10 score scale (its absolute value is taken again, so a signed
    error gives the same result). Differentiable, not detached (as the reference). For
    ``0 < gamma < 1`` the derivative of ``x ** gamma`` is infinite at zero error; there the
    factor's gradient is set to 0 instead of NaN. No host sync.

    Example:
        >>> import math
        >>> focal_factor(torch.tensor([0.0, math.log(3.0)]), beta=1.0, gamma=1.0)
        tensor([0.0000, 0.5000])
    """
    if activation not in ("sigmoid", "tanh"):
        raise ValueError(f"activation must be 'sigmoid' or 'tanh', got {activation!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    scaled = beta * abs_error.abs()
    base = 2 * torch.sigmoid(scaled) - 1 if activation == "sigmoid" else torch.tanh(scaled)
    if 0 < gamma < 1:
        positive = base > 0
        safe = torch.where(positive, base, torch.ones_like(base))
        return torch.where(positive, safe.pow(gamma), torch.zeros_like(base))
    return base.pow(gamma)


def focal_loss(
    per_sample_loss: torch.Tensor,
    abs_error: torch.Tensor,
    beta: float = DEFAULT_BETA,
    gamma: float = DEFAULT_GAMMA,
    activation: Activation = "sigmoid",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Focal-R loss: ``sum_i w_i l_i f(e_i) / sum_i w_i`` (plain mean without ``weight``), scalar.

    ``per_sample_loss``, ``abs_error`` and ``weight`` have shape (B,). The weighted mean is the
    framework's convention (:func:`elta_lightning.losses.weighted_mean`); the reference computes
    ``mean_i(w_i l_i f_i)``, which equals it when the batch's weights average 1. The gradient flows
    through both the loss and the factor. No host sync.

    Example:
        >>> import math
        >>> focal_loss(torch.tensor([2.0, 4.0]), torch.tensor([0.0, math.log(3.0)]), beta=1.0)
        tensor(1.0000)
    """
    if per_sample_loss.ndim != 1:
        raise ValueError(
            f"per_sample_loss must have shape (B,), got {tuple(per_sample_loss.shape)}"
        )
    if abs_error.shape != per_sample_loss.shape:
        raise ValueError(
            f"abs_error must have shape {tuple(per_sample_loss.shape)} like per_sample_loss, "
            f"got {tuple(abs_error.shape)}"
        )
    factor = focal_factor(abs_error, beta=beta, gamma=gamma, activation=activation)
    return weighted_mean(per_sample_loss * factor, weight)
