"""TFA: tail-oriented feature augmentation (ELTA's mixup in feature space).

Per training batch, after the backbone and before the head, TFA draws ``m`` pairs ``(i, j)`` and
appends ``m`` mixed samples ``lam * f_i + (1 - lam) * f_j`` (features, labels and scores) to the
batch, so the head and the loss see ``B + m`` samples and the backbone gets gradient through the
mixed features too.

Sampling law (s_i the score of sample i, s_bar the batch mean)::

    P(i)     = softmax_i( |s_bar - s_i| / tau1 )                    tails drawn more often
    P(j | i) = softmax_{j != i}( tau2 / (|s_i - s_j| + 0.01) )      close partners preferred
    lam      = P(i) / (P(i) + P(j))                                 both from the first stage

Score scale: the temperatures ``tau1`` and ``tau2`` act on scores on the COMMON 0..10 scale (the
scale of the ELTA authors' CSV files). The caller converts native scores (AADB 0..1, PARA 1..5)
with the dataset's ``to_common`` factor before calling, so one ``tau`` means the same thing on
every dataset. Everything here is computed in log space with ``torch.softmax`` on the device of
the inputs (the authors computed ``exp(tau2 / (d + 0.01))`` in numpy, which overflows for
``tau2 = 10`` whenever two scores coincide), without host-device synchronisation, and is
reproducible through an optional ``torch.Generator`` (on the inputs' device).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = [
    "TFAResult",
    "PARTNER_DISTANCE_OFFSET",
    "resolve_num_mixed",
    "tfa_sampling_logits",
    "tfa_sampling_probabilities",
    "sample_mix_pairs",
    "tfa_mix",
]

#: The ``+ 0.01`` of the second-stage temperature ``tau2 / (|s_i - s_j| + 0.01)`` (authors' value).
PARTNER_DISTANCE_OFFSET = 0.01


class TFAResult(NamedTuple):
    """The augmented batch of :func:`tfa_mix` (the ``B`` originals first, then ``m`` mixed).

    ``features`` (B+m, D), ``targets`` (B+m, ...) and ``scores`` (B+m,) of the augmented batch;
    ``first``, ``partner`` (m,) the indices ``i`` and ``j`` into the original batch and ``lam``
    (m,) the mixing weights of the ``m`` appended samples.
    """

    features: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    first: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be a finite number > 0 (a softmax temperature on the common 0..10 "
            f"score scale; the authors' grid is tau1 in 0.05..0.5, tau2 in 2..10), got {value!r}"
        )


def _check_num_mixed(num_mixed: int) -> None:
    if isinstance(num_mixed, bool) or not isinstance(num_mixed, int) or num_mixed < 0:
        raise ValueError(f"num_mixed must be an int >= 0, got {num_mixed!r}")


def _check_scores(scores: torch.Tensor) -> None:
    if scores.dim() != 1:
        raise ValueError(
            f"scores must have shape (B,) (one mean score per sample), got {tuple(scores.shape)}"
        )
    if scores.shape[0] < 2:
        raise ValueError(
            "TFA needs a batch of at least 2 samples (a mixed sample has a partner j != i), got "
            f"a batch of {scores.shape[0]}; use drop_last=True or a batch size >= 2"
        )


def resolve_num_mixed(batch_size: int, count: int | None = None, ratio: float | None = None) -> int:
    """Number ``m`` of mixed samples per batch, from a fixed ``count`` or a ``ratio`` of the batch.

    ``ratio`` gives ``m = max(1, round(ratio * batch_size))`` (ELTA 2.0 uses ratio 0.25; Python's
    ``round``, half to even); ``count`` gives ``m = count``. With neither, ``m = 1``, the value
    hard-coded in the authors' ELTA 1.0 code. Giving both is an error.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if count is not None and ratio is not None:
        raise ValueError(
            f"give the number of mixed samples as a count or as a ratio, not both "
            f"(count={count!r}, ratio={ratio!r})"
        )
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise ValueError(f"ratio must be a number > 0, got {ratio!r}")
        if not math.isfinite(ratio) or ratio <= 0:
            raise ValueError(
                f"ratio must be a finite number > 0 (fraction of the batch to mix), got {ratio!r}"
            )
        return max(1, round(ratio * batch_size))
    if count is None:
        return 1
    _check_num_mixed(count)
    return count


def tfa_sampling_logits(
    scores: torch.Tensor, tau1: float, tau2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-space form of TFA's two sampling stages, for scores (B,) on the common 0..10 scale.

    Returns ``(first, partner)``: ``first`` (B,) with ``first[i] = |s_bar - s_i| / tau1`` (s_bar
    the batch mean), and ``partner`` (B, B) with ``partner[i, j] = tau2 / (|s_i - s_j| + 0.01)``
    and ``-inf`` on the diagonal (j != i). ``softmax`` of them gives P(i) and P(j | i); the
    logits are bounded by ``100 * tau2`` so nothing is exponentiated raw. Computed on detached
    scores in float32 or wider.
    """
    _check_positive("tau1", tau1)
    _check_positive("tau2", tau2)
    _check_scores(scores)
    s = scores.detach()
    if not s.is_floating_point() or torch.finfo(s.dtype).bits < 32:
        s = s.float()
    first = (s.mean() - s).abs() / tau1
    distance = (s.unsqueeze(1) - s.unsqueeze(0)).abs()
    partner = tau2 / (distance + PARTNER_DISTANCE_OFFSET)
    diagonal = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    partner = partner.masked_fill(diagonal, float("-inf"))
    return first, partner


def tfa_sampling_probabilities(
    scores: torch.Tensor, tau1: float, tau2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """TFA's sampling probabilities ``(P(i) (B,), P(j | i) (B, B))`` for scores (B,) on 0..10.

    ``P(i) = softmax_i(|s_bar - s_i| / tau1)``; row ``i`` of the second tensor is
    ``P(j | i) = softmax_{j != i}(tau2 / (|s_i - s_j| + 0.01))`` with an exact zero at ``j = i``.
    With all scores equal, P(i) is uniform and each row uniform over the other B - 1 samples.
    """
    first, partner = tfa_sampling_logits(scores, tau1, tau2)
    return torch.softmax(first, dim=0), torch.softmax(partner, dim=1)


def sample_mix_pairs(
    scores: torch.Tensor,
    num_mixed: int,
    tau1: float,
    tau2: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``num_mixed`` TFA pairs for scores (B,) on the common 0..10 scale.

    Returns ``(first, partner, lam)``, each of shape (m,): ``first`` drawn with replacement from
    ``P(i)``, each ``partner[k] != first[k]`` drawn from ``P(j | first[k])``, and
    ``lam = P(i) / (P(i) + P(j))`` with both P from the FIRST stage, computed in log space as
    ``sigmoid(logit_i - logit_j)``. Sampling uses ``torch.multinomial`` on the device of
    ``scores`` (no host sync); pass a ``generator`` on that device for reproducible draws.
    """
    _check_num_mixed(num_mixed)
    first_logits, partner_logits = tfa_sampling_logits(scores, tau1, tau2)
    device = first_logits.device
    if num_mixed == 0:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.empty(0, dtype=first_logits.dtype, device=device)
    p_first = torch.softmax(first_logits, dim=0)
    first = torch.multinomial(p_first, num_mixed, replacement=True, generator=generator)
    p_partner = torch.softmax(partner_logits[first], dim=1)
    partner = torch.multinomial(p_partner, 1, generator=generator).squeeze(1)
    lam = torch.sigmoid(first_logits[first] - first_logits[partner])
    return first, partner, lam


def tfa_mix(
    features: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    num_mixed: int,
    tau1: float,
    tau2: float,
    generator: torch.Generator | None = None,
) -> TFAResult:
    """Append ``num_mixed`` TFA-mixed samples to a batch (features (B, D), targets (B,) or (B, K)).

    With pairs ``(i, j, lam)`` from :func:`sample_mix_pairs` (scores (B,) on the common 0..10
    scale), the appended samples are ``f = lam f_i + (1 - lam) f_j``,
    ``y = lam y_i + (1 - lam) y_j`` (a whole vote distribution or a scalar label) and
    ``s = lam s_i + (1 - lam) s_j``. Mixing is differentiable in ``features``: the backbone gets
    gradient through the mixed samples too. ``lam`` carries no gradient.
    """
    if features.dim() != 2:
        raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
    _check_scores(scores)
    batch = features.shape[0]
    if targets.dim() == 0 or targets.shape[0] != batch or scores.shape[0] != batch:
        raise ValueError(
            "features, targets and scores must share the batch dimension, got "
            f"{tuple(features.shape)}, {tuple(targets.shape)} and {tuple(scores.shape)}"
        )
    first, partner, lam = sample_mix_pairs(scores, num_mixed, tau1, tau2, generator=generator)

    def mix(values: torch.Tensor) -> torch.Tensor:
        weight = lam.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
        return weight * values[first] + (1 - weight) * values[partner]

    if not targets.is_floating_point():
        targets = targets.to(features.dtype if features.is_floating_point() else torch.float32)
    if not scores.is_floating_point():
        scores = scores.to(lam.dtype)
    return TFAResult(
        features=torch.cat([features, mix(features)], dim=0),
        targets=torch.cat([targets, mix(targets)], dim=0),
        scores=torch.cat([scores, mix(scores)], dim=0),
        first=first,
        partner=partner,
        lam=lam,
    )
