"""ConR: contrastive regularisation for imbalanced regression (Keramati, Meng, Evans, ICLR 2024).

ConR pulls together the features of samples with close labels and pushes apart the features of
samples whose labels are far but whose predictions are close (the "wrong proximities"), pushing
harder the farther apart the labels are. For the ``N = 2B`` samples of two augmented views
(stacked by the caller), with features ``z``, labels ``y``, detached predictions ``yhat`` and
sample weights ``w`` (LDS / INV weights, ones for none)::

    q_i    = z_i / |z_i|,                 s_ij = q_i . q_j / tau
    P_i    = { j != i : |y_i - y_j| <= omega }                             positives
    N_i    = { j : |y_i - y_j| > omega  and  |yhat_i - yhat_j| <= omega }   negatives
    rho_ij = w_i exp(e |y_i - y_j|)                                         pushing weight
    D_i    = sum_{k in P_i} exp(s_ik) + (N - |P_i|) + sum_{k in N_i} rho_ik exp(s_ik)
    l_i    = -(1 / |P_i|) sum_{j in P_i} log( exp(s_ij) / D_i )            (0 if N_i empty)
    L_ConR = mean_i( w_i l_i );           total loss = L_reg + beta L_ConR (beta: the caller's)

This is exactly BorealisAI/ConR ``agedb-dir/loss.py`` ``ConR``, with its quirks kept on purpose:

* the ``(N - |P_i|)`` term: the authors sum ``exp(s_ik * 1[k in P_i])`` over ALL ``k``, so every
  non-positive ``k`` (the anchor itself included) adds ``exp(0) = 1`` to the denominator. It is
  reproduced deliberately so that losses and tuned ``beta`` match the reference;
* ``tau = 0.07`` (the reference's ``loss.py`` overwrites any ``-t`` argument with 0.07);
* anchors without a negative contribute 0, and they still count in the mean over ``N``.

Deliberate deviations: an anchor with NO positive gives ``l_i = 0`` (the reference divides 0 by
``|P_i| = 0`` and returns NaN for the whole batch; with two views per image every anchor has its
twin as a positive, so this only matters for unpaired or single-view calls); distances are
compared as ``d <= omega + 1e-5`` so that float32 round-off in ``5.1 - 5.0`` vs ``5.2 - 5.1``
does not flip a pair across the threshold; the denominator is evaluated with ``logsumexp``
(the same value, without overflow for small ``tau``).

Score scale and defaults. Labels and predictions are on the COMMON 0..10 scale. The reference
hyper-parameters are in age units (AgeDB / IMDB-WIKI, ages ~0..100 binned per year):
``omega = 1`` year, ``e = 0.01``, ``beta = 4``, ``tau = 0.07``. Re-expressed for 0..10:

* ``omega = 0.1`` (:data:`DEFAULT_OMEGA`): one year is one label bin of the reference, and one
  bin of the framework's default binning (width 0.1) is 0.1; the range ratio (0..~100 years vs
  0..10) gives the same factor 10. Check on the batch: a Gaussian with AVA's score std (~0.73)
  puts ~11% of the samples within +-0.1 of its mode (~7% for PARA, std ~1.09; ~5.5% for TAD66K,
  std ~1.45), so each anchor of a 2 x 64 batch keeps several positives besides its twin and most
  label-far pairs remain candidates for negatives. With a coarser binning use ``omega`` = one
  bin width.
* ``e = 0.1`` (:data:`DEFAULT_PUSH_E`): ``rho`` grows as ``exp(e |dy|)``; with label distances 10x
  smaller, ``e`` 10x larger keeps the same push (``exp(1) = 2.7`` across the full range, as
  ``exp(0.01 * 100)`` for ages).
* ``tau = 0.07`` and ``beta = 4.0`` (:data:`DEFAULT_TEMPERATURE`, :data:`DEFAULT_BETA`) are
  scale-free and kept.

DDP: the reference sees the whole DataParallel batch; to match it, the caller all-gathers
``features`` (with gradient), ``labels``, ``preds`` and ``weights`` before calling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "conr_loss",
    "DEFAULT_OMEGA",
    "DEFAULT_PUSH_E",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_BETA",
    "DISTANCE_TOLERANCE",
    "NORMALIZE_EPS",
]

#: Label / prediction closeness threshold on the 0..10 scale (reference: 1 year of age).
DEFAULT_OMEGA = 0.1
#: Exponent of the pushing weight ``exp(e |dy|)`` on the 0..10 scale (reference: 0.01 per year).
DEFAULT_PUSH_E = 0.1
#: Softmax temperature (hard-coded 0.07 in the reference ``loss.py``).
DEFAULT_TEMPERATURE = 0.07
#: Weight of ConR in the total loss, applied by the caller (reference ``--beta 4.0``).
DEFAULT_BETA = 4.0
#: A distance within this of ``omega`` counts as ``<= omega`` (float32 round-off on 0..10).
DISTANCE_TOLERANCE = 1e-5
#: ``eps`` of ``F.normalize``: a zero feature vector has similarity 0 with everything, not NaN.
NORMALIZE_EPS = 1e-8


def _check_number(name: str, value: float, minimum: float, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")


def conr_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    weights: torch.Tensor,
    omega: float,
    push_e: float,
    temperature: float = DEFAULT_TEMPERATURE,
) -> torch.Tensor:
    """ConR loss of ``N`` samples (two stacked views): features (N, D), labels, preds, weights (N,).

    ``labels`` and ``preds`` are mean scores on the common 0..10 scale; ``preds`` is detached
    here (the reference passes ``outputs.clone().detach()``). ``weights`` (>= 0, ones for no
    re-weighting) scale each anchor's pushing weight ``rho`` and its term of the mean; they carry
    no gradient. ``omega`` (suggested 0.1 = one bin) and ``push_e`` (suggested 0.1) are the
    reference's 1 year and 0.01 re-expressed for 0..10 (see the module docstring).

    Returns ``mean_i(w_i l_i)`` as a 0-d tensor, in float32 or wider; anchors with no negative or
    no positive contribute 0 (the reference gives NaN for the latter). No host-device sync.
    """
    _check_number("omega", omega, 0.0, strict=False)
    _check_number("push_e", push_e, 0.0, strict=False)
    _check_number("temperature", temperature, 0.0, strict=True)
    if features.dim() != 2:
        raise ValueError(f"features must have shape (N, D), got {tuple(features.shape)}")
    n = features.shape[0]
    if n == 0:
        raise ValueError("ConR needs a non-empty batch")
    for name, values in (("labels", labels), ("preds", preds), ("weights", weights)):
        if values.dim() != 1 or values.shape[0] != n:
            raise ValueError(
                f"{name} must have shape (N,) matching features (N, D), got "
                f"{tuple(values.shape)} and {tuple(features.shape)}"
            )

    dtype = torch.promote_types(features.dtype, torch.float32)
    q = F.normalize(features.to(dtype), dim=1, eps=NORMALIZE_EPS)
    device_type = features.device.type
    if torch.amp.is_autocast_available(device_type):
        # Keep the N x N similarities in float32 even under mixed precision.
        with torch.autocast(device_type=device_type, enabled=False):
            sim = (q @ q.transpose(0, 1)) / temperature
    else:
        sim = (q @ q.transpose(0, 1)) / temperature

    y = labels.detach().to(dtype)
    p = preds.detach().to(dtype)
    w = weights.detach().to(dtype)
    label_dist = (y.unsqueeze(1) - y.unsqueeze(0)).abs()
    pred_dist = (p.unsqueeze(1) - p.unsqueeze(0)).abs()
    threshold = omega + DISTANCE_TOLERANCE
    not_self = ~torch.eye(n, dtype=torch.bool, device=features.device)
    label_close = label_dist <= threshold
    positive = label_close & not_self
    negative = ~label_close & (pred_dist <= threshold)

    # log D_i = logsumexp over 2N terms: s_ik for k in P_i and 0 (= log 1) for every other k,
    # then log(rho_ik) + s_ik for k in N_i (-inf elsewhere, i.e. no term).
    first = torch.where(positive, sim, torch.zeros_like(sim))
    log_rho = torch.log(w).unsqueeze(1) + push_e * label_dist
    second = torch.where(negative, log_rho + sim, torch.full_like(sim, -math.inf))
    log_denominator = torch.logsumexp(torch.cat([first, second], dim=1), dim=1)

    # l_i = mean_{j in P_i} (log D_i - s_ij); 0 when P_i is empty (count clamped to 1).
    positive_f = positive.to(dtype)
    num_positive = positive_f.sum(dim=1)
    positive_sim = (sim * positive_f).sum(dim=1)
    per_anchor = (num_positive * log_denominator - positive_sim) / num_positive.clamp(min=1)
    has_negative = negative.any(dim=1).to(dtype)
    return (w * per_anchor * has_negative).mean()
