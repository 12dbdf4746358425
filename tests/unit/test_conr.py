"""Unit tests of ConR (contrastive regularisation for imbalanced regression)."""

from __future__ import annotations

import math

import pytest
import torch
from sync_check import HostSyncRecorder

from elta_lightning.longtail.conr import (
    DEFAULT_OMEGA,
    DEFAULT_PUSH_E,
    conr_loss,
)

# Two images x two views, stacked as the caller does: [img A view 1, img B view 1, A view 2,
# B view 2]. Unit features f0 = (1, 0), f1 = (0, 1), f2 = (0.6, 0.8), f3 = (0.8, 0.6):
#   cosines 01 = 0, 02 = 0.6, 03 = 0.8, 12 = 0.8, 13 = 0.6, 23 = 0.96.
# tau = 0.5 -> s = 2 cos: s01 = 0, s02 = s13 = 1.2, s03 = s12 = 1.6, s23 = 1.92.
# Labels [2, 5, 2, 5], omega = 0.5: positives are the twins, P_0 = {2}, P_1 = {3}, ...
# Preds [3.0, 3.4, 3.2, 3.6]: pred distances 01 = 0.4, 12 = 0.2, 23 = 0.4 are <= 0.5 and the
# label distance there is 3 > 0.5, so the negatives are N_0 = {1}, N_1 = {0, 2}, N_2 = {1, 3},
# N_3 = {2} (pair 03 has pred distance 0.6 > 0.5).
# Weights [1, 0.5, 1, 0.5]; e = 0.1: rho_ij = w_i exp(0.1 * 3) = w_i * 1.34985881.
# Each anchor has |P_i| = 1, so the other 3 samples (self included) add exp(0) = 1 each:
#   D_0 = e^1.2 + 3 + 1.0 * e^0.3 * e^0                = 7.66997573
#   D_1 = e^1.2 + 3 + 0.5 * e^0.3 * (e^0 + e^1.6)      = 10.33799355
#   D_2 = e^1.2 + 3 + 1.0 * e^0.3 * (e^1.6 + e^1.92)   = 22.21334223
#   D_3 = e^1.2 + 3 + 0.5 * e^0.3 * e^1.92             = 10.92378236
# (e^1.2 = 3.32011692, e^0.3 = 1.34985881, e^1.6 = 4.95303242, e^1.92 = 6.82095847)
# l_i = log D_i - s_{i, twin} = log D_i - 1.2 = [0.83731345, 1.13582580, 1.90069311, 1.19094228]
# L = (1 * 0.83731345 + 0.5 * 1.13582580 + 1 * 1.90069311 + 0.5 * 1.19094228) / 4 = 0.97534765
HAND_FEATURES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
HAND_LABELS = torch.tensor([2.0, 5.0, 2.0, 5.0])
HAND_PREDS = torch.tensor([3.0, 3.4, 3.2, 3.6])
HAND_WEIGHTS = torch.tensor([1.0, 0.5, 1.0, 0.5])
HAND_KWARGS = {"omega": 0.5, "push_e": 0.1, "temperature": 0.5}


def _reference_conr(features, labels, preds, weights, omega, push_e, temperature, fix_nan=True):
    """The authors' formula in plain Python floats, one anchor at a time (independent of the
    module under test): the first denominator sum runs over ALL k with s_ik masked to 0 outside
    P_i. ``fix_nan=False`` keeps the reference's 0/0 for anchors without a positive."""
    n = len(labels)
    q = []
    for row in features:
        norm = math.sqrt(sum(x * x for x in row))
        q.append([x / max(norm, 1e-8) for x in row])
    total = 0.0
    for i in range(n):
        s = [sum(a * b for a, b in zip(q[i], q[k])) / temperature for k in range(n)]
        dy = [abs(labels[i] - labels[k]) for k in range(n)]
        dp = [abs(preds[i] - preds[k]) for k in range(n)]
        pos = [k != i and dy[k] <= omega for k in range(n)]
        neg = [dy[k] > omega and dp[k] <= omega for k in range(n)]
        den = sum(math.exp(s[k] if pos[k] else 0.0) for k in range(n))
        den += sum(
            weights[i] * math.exp(push_e * dy[k]) * math.exp(s[k]) for k in range(n) if neg[k]
        )
        if not any(pos):
            loss_i = 0.0 if fix_nan else math.nan
        else:
            terms = [-math.log(math.exp(s[k]) / den) for k in range(n) if pos[k]]
            loss_i = sum(terms) / len(terms)
        if not any(neg):
            loss_i *= 0.0  # NaN stays NaN, as in the reference's loss * no_neg_flag
        total += weights[i] * loss_i
    return total / n


def _two_view_batch(seed: int, batch: int = 8, dim: int = 5):
    """Random two-view batch: labels on a 0.5 grid (ties), preds shrunk towards 5 (so that
    label-far samples often get close predictions: ConR's negatives)."""
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.randint(0, 21, (batch,), generator=gen) * 0.5).double()
    labels = torch.cat([labels, labels])
    preds = 5 + 0.3 * (labels - 5) + torch.randn(2 * batch, generator=gen, dtype=torch.float64)
    weights = torch.rand(batch, generator=gen, dtype=torch.float64) + 0.5
    weights = torch.cat([weights, weights])
    features = torch.randn(2 * batch, dim, generator=gen, dtype=torch.float64)
    return features, labels, preds, weights


def _as_lists(*tensors):
    return [t.tolist() for t in tensors]


def test_hand_computed_two_images_two_views():
    loss = conr_loss(HAND_FEATURES, HAND_LABELS, HAND_PREDS, HAND_WEIGHTS, **HAND_KWARGS)
    assert loss.shape == () and loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(0.97534765))
    reference = _reference_conr(
        *_as_lists(HAND_FEATURES, HAND_LABELS, HAND_PREDS, HAND_WEIGHTS), **HAND_KWARGS
    )
    assert reference == pytest.approx(0.97534765, abs=1e-7)


def test_feature_norm_does_not_matter():
    scaled = HAND_FEATURES * torch.tensor([[3.0], [0.2], [5.0], [1.0]])
    loss = conr_loss(scaled, HAND_LABELS, HAND_PREDS, HAND_WEIGHTS, **HAND_KWARGS)
    torch.testing.assert_close(loss, torch.tensor(0.97534765))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("omega,push_e,tau", [(1.0, 0.01, 0.07), (0.5, 0.1, 0.2), (0.25, 0.0, 1.0)])
def test_matches_reference_formula(seed, omega, push_e, tau):
    features, labels, preds, weights = _two_view_batch(seed)
    loss = conr_loss(features, labels, preds, weights, omega, push_e, tau)
    assert loss.dtype == torch.float64
    reference = _reference_conr(
        *_as_lists(features, labels, preds, weights), omega, push_e, tau, fix_nan=False
    )
    # Two views: every anchor has its twin as a positive, so the reference is finite here.
    assert math.isfinite(reference) and reference > 0
    assert loss.item() == pytest.approx(reference, rel=1e-10, abs=1e-12)


def test_denominator_counts_one_per_non_positive():
    # Twins 0, 1 (label 2, same feature); sample 2 (label 8, same pred) is their negative,
    # sample 3 (label 5, pred 0) is neither positive nor negative, and still adds exp(0) = 1
    # to their denominators, as do the anchor itself and sample 2. tau = 1, e = 0:
    # anchor 0: P = {1}, s01 = 1; N = {2}, s02 = 0 (orthogonal), rho = 1:
    #   D_0 = e^1 + (4 - 1) + 1 * e^0 = e + 4, l_0 = log(e + 4) - 1 = 0.90483244 = l_1.
    # Anchors 2 and 3 have no positive -> 0. Weights 1: L = 2 * 0.90483244 / 4 = 0.45241622.
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([2.0, 2.0, 8.0, 5.0])
    preds = torch.tensor([5.0, 5.0, 5.0, 0.0])
    loss = conr_loss(features, labels, preds, torch.ones(4), omega=0.5, push_e=0.0, temperature=1)
    expected = 2 * (math.log(math.e + 4) - 1) / 4
    assert expected == pytest.approx(0.45241622, abs=1e-8)
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_anchor_without_positive_gives_zero_not_nan():
    # Single view, unique labels 1, 3, 5 and equal preds: every anchor has negatives but no
    # positive. The reference returns 0/0 = NaN; here each anchor contributes 0.
    features = torch.randn(3, 4, requires_grad=True)
    labels = torch.tensor([1.0, 3.0, 5.0])
    preds = torch.full((3,), 4.0)
    reference = _reference_conr(
        *_as_lists(features.detach(), labels, preds, torch.ones(3)), 0.1, 0.1, 0.07, fix_nan=False
    )
    assert math.isnan(reference)
    loss = conr_loss(features, labels, preds, torch.ones(3), 0.1, 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros(3, 4))


def test_anchor_without_positive_among_others():
    # The hand batch plus a fifth, unpaired sample (label 8, pred 3.15): it has no positive
    # (0 for it, where the reference would turn the whole batch into NaN), but it is a
    # negative of anchors 0..3 and adds to their denominators.
    features = torch.cat([HAND_FEATURES, torch.tensor([[-1.0, 0.5]])]).requires_grad_()
    labels = torch.cat([HAND_LABELS, torch.tensor([8.0])])
    preds = torch.cat([HAND_PREDS, torch.tensor([3.15])])
    weights = torch.cat([HAND_WEIGHTS, torch.tensor([2.0])])
    loss = conr_loss(features, labels, preds, weights, **HAND_KWARGS)
    expected = _reference_conr(*_as_lists(features.detach(), labels, preds, weights), **HAND_KWARGS)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() > 0.97534765 * 4 / 5  # the extra negative pushes the others harder
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_no_negative_anchors_give_zero():
    # All labels within omega: everybody is a positive, nobody a negative -> 0.
    features = torch.randn(6, 3, requires_grad=True)
    labels = torch.tensor([5.0, 5.05, 5.1, 5.0, 5.05, 5.1])
    loss = conr_loss(features, labels, torch.rand(6) * 10, torch.ones(6), 0.1, 0.1)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros(6, 3))
    # Labels far apart but predictions far apart too: no wrong proximity, no negative -> 0.
    labels = torch.tensor([1.0, 5.0, 9.0, 1.0, 5.0, 9.0])
    assert conr_loss(features, labels, labels, torch.ones(6), 0.1, 0.1).item() == 0.0


def test_anchor_without_negative_drops_out():
    # Hand batch with pred 3 moved to 4.0: pair 23 now has pred distance 0.8 > 0.5, so anchor
    # 3 has no negative (term 0) and anchor 2 keeps only negative 1:
    #   D_2 = e^1.2 + 3 + e^0.3 * e^1.6 = 13.00601137, l_2 = log D_2 - 1.2 = 1.36541166
    #   L = (0.83731345 + 0.5 * 1.13582580 + 1.36541166 + 0) / 4 = 0.69265950
    preds = torch.tensor([3.0, 3.4, 3.2, 4.0])
    loss = conr_loss(HAND_FEATURES, HAND_LABELS, preds, HAND_WEIGHTS, **HAND_KWARGS)
    torch.testing.assert_close(loss, torch.tensor(0.69265950))


def test_gradient_finite_and_matches_finite_differences():
    features, labels, preds, weights = _two_view_batch(7, batch=4, dim=3)
    features.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f: conr_loss(f, labels, preds, weights, 1.0, 0.1, 0.2), (features,)
    )
    loss = conr_loss(features, labels, preds, weights, 1.0, 0.1, 0.07)
    loss.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_small_temperature_and_zero_feature_are_finite():
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.01]], requires_grad=True)
    labels = torch.tensor([2.0, 8.0, 2.0, 8.0])
    preds = torch.full((4,), 5.0)
    loss = conr_loss(features, labels, preds, torch.ones(4), 0.1, 0.1, temperature=0.001)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_preds_labels_weights_get_no_gradient():
    preds = HAND_PREDS.clone().requires_grad_()
    weights = HAND_WEIGHTS.clone().requires_grad_()
    features = HAND_FEATURES.clone().requires_grad_()
    loss = conr_loss(features, HAND_LABELS, preds, weights, **HAND_KWARGS)
    loss.backward()
    assert preds.grad is None and weights.grad is None
    assert features.grad is not None


def test_weights_scale_anchor_terms_and_push():
    # A zero weight removes the anchor's term; its rho vanishes too. Per anchor:
    # w_i l_i(w_i), with l_i growing in w_i (a heavier push in the denominator).
    base = conr_loss(HAND_FEATURES, HAND_LABELS, HAND_PREDS, torch.ones(4), **HAND_KWARGS)
    zeroed = torch.tensor([0.0, 1.0, 1.0, 1.0])
    loss = conr_loss(HAND_FEATURES, HAND_LABELS, HAND_PREDS, zeroed, **HAND_KWARGS)
    expected = _reference_conr(
        *_as_lists(HAND_FEATURES, HAND_LABELS, HAND_PREDS, zeroed), **HAND_KWARGS
    )
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss < base
    previous = 0.0
    for scale in (0.5, 1.0, 2.0, 4.0):
        weights = torch.full((4,), scale)
        loss = conr_loss(HAND_FEATURES, HAND_LABELS, HAND_PREDS, weights, **HAND_KWARGS)
        expected = _reference_conr(
            *_as_lists(HAND_FEATURES, HAND_LABELS, HAND_PREDS, weights), **HAND_KWARGS
        )
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        assert loss.item() / scale > previous  # more than linear: rho grows with w too
        previous = loss.item() / scale


def test_push_e_increases_loss():
    losses = [
        conr_loss(HAND_FEATURES, HAND_LABELS, HAND_PREDS, HAND_WEIGHTS, 0.5, e, 0.5).item()
        for e in (0.0, 0.1, 1.0)
    ]
    assert losses[0] < losses[1] < losses[2]


def test_threshold_tolerates_float_round_off():
    # In float32, 5.1 - 5.0 = 0.0999999 but 5.3 - 5.2 = 0.1000004: both count as <= 0.1.
    assert (torch.tensor(5.3) - torch.tensor(5.2)).item() > 0.1
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    preds = torch.full((3,), 5.0)
    for labels in ([5.0, 5.1, 9.0], [5.2, 5.3, 9.0]):
        loss = conr_loss(features, torch.tensor(labels), preds, torch.ones(3), 0.1, 0.0, 1.0)
        # Anchors 0 and 1: P = {other}, s = 0; N = {2}, s = 1 / sqrt(2) = 0.70710678;
        # D = 1 + 2 + e^0.70710678 = 5.02811498, l = log D = 1.61505648; anchor 2: no positive.
        torch.testing.assert_close(loss, torch.tensor(2 * 1.61505648 / 3))


def test_low_precision_features_give_float32_loss():
    features = torch.randn(8, 16).to(torch.bfloat16)
    labels = torch.tensor([1.0, 4.0, 6.0, 9.0] * 2)
    loss = conr_loss(features, labels, torch.full((8,), 5.0), torch.ones(8), 0.1, 0.1)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_defaults_on_common_scale():
    assert DEFAULT_OMEGA == 0.1 and DEFAULT_PUSH_E == 0.1


def test_no_host_sync_forward_and_backward():
    features, labels, preds, weights = _two_view_batch(3, batch=16, dim=8)
    features = features.float().requires_grad_()
    with HostSyncRecorder() as rec:
        loss = conr_loss(features, labels.float(), preds.float(), weights.float(), 0.1, 0.1)
        loss.backward()
    assert rec.syncs == []
    assert features.grad is not None


def test_bad_shapes_and_values_raise():
    f, y = torch.randn(4, 3), torch.rand(4)
    with pytest.raises(ValueError, match="features must have shape"):
        conr_loss(torch.randn(4), y, y, y, 0.1, 0.1)
    with pytest.raises(ValueError, match="labels must have shape"):
        conr_loss(f, torch.rand(5), y, y, 0.1, 0.1)
    with pytest.raises(ValueError, match="preds must have shape"):
        conr_loss(f, y, torch.rand(4, 1), y, 0.1, 0.1)
    with pytest.raises(ValueError, match="weights must have shape"):
        conr_loss(f, y, y, torch.rand(3), 0.1, 0.1)
    with pytest.raises(ValueError, match="non-empty"):
        conr_loss(torch.randn(0, 3), torch.rand(0), torch.rand(0), torch.rand(0), 0.1, 0.1)
    with pytest.raises(ValueError, match="omega"):
        conr_loss(f, y, y, y, -0.1, 0.1)
    with pytest.raises(ValueError, match="push_e"):
        conr_loss(f, y, y, y, 0.1, math.nan)
    with pytest.raises(ValueError, match="temperature"):
        conr_loss(f, y, y, y, 0.1, 0.1, temperature=0.0)
