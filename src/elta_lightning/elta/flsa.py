"""FLSA: feature-label similarity alignment (ELTA's auxiliary loss).

FLSA asks the cosine similarity of two features to match the similarity of their scores::

    M_f[a, b] = cos(f_a, f_b)
    M_l[a, b] = 1 - |s_a - s_b| / (max_c s_c - min_c s_c)
    L_FLSA    = mean over all B^2 pairs (diagonal included) of (M_f[a, b] - M_l[a, b])^2

Score scale: ``M_l`` is normalised by the batch's score range, so FLSA is invariant to the scale
of the scores; by convention callers pass scores on the COMMON 0..10 scale like the other ELTA
parts. The caller derives mean scores from vote distributions (``sum_k level_k p_k``) before
calling, so FLSA works with distribution and scalar labels alike. For the multi-GPU variant the
caller gathers features and scores from all ranks first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["flsa_loss", "NORMALIZE_EPS"]

#: ``eps`` of ``F.normalize``: a zero feature vector has cosine 0 with everything, not NaN.
NORMALIZE_EPS = 1e-8


def flsa_loss(features: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """FLSA loss of a batch: features (B, D) and mean scores (B,) -> scalar tensor.

    Scores on the common 0..10 scale by convention (the loss is invariant to an affine change
    of score scale, since ``M_l`` divides by the batch's range).

    ``mean_{a,b} (cos(f_a, f_b) - (1 - |s_a - s_b| / (max s - min s)))^2`` over all ``B^2``
    pairs, diagonal included. When all scores in the batch are equal (range 0, where the
    authors' code divided by zero) the loss is exactly 0 and still part of the autograd graph,
    with zero gradient; this is done with ``torch.where``, not a branch on tensor values.
    Computed in float32 or wider; the result has that dtype.
    """
    if features.dim() != 2:
        raise ValueError(f"features must have shape (B, D), got {tuple(features.shape)}")
    if scores.dim() != 1 or scores.shape[0] != features.shape[0]:
        raise ValueError(
            "scores must have shape (B,) matching features (B, D), got "
            f"{tuple(scores.shape)} and {tuple(features.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError("FLSA needs a non-empty batch")
    dtype = torch.promote_types(features.dtype, torch.float32)
    f = F.normalize(features.to(dtype), dim=1, eps=NORMALIZE_EPS)
    s = scores.to(dtype)
    device_type = features.device.type
    if torch.amp.is_autocast_available(device_type):
        # Keep the B x B cosines in float32 even under mixed precision.
        with torch.autocast(device_type=device_type, enabled=False):
            cosine = f @ f.transpose(0, 1)
    else:
        cosine = f @ f.transpose(0, 1)
    score_range = s.max() - s.min()
    has_range = score_range > 0
    safe_range = torch.where(has_range, score_range, torch.ones_like(score_range))
    label_similarity = 1 - (s.unsqueeze(1) - s.unsqueeze(0)).abs() / safe_range
    loss = (cosine - label_similarity).square().mean()
    return torch.where(has_range, loss, loss * 0)
