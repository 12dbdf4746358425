"""Unit tests of FLSA (feature-label similarity alignment loss)."""

from __future__ import annotations

import math

import pytest
import torch

from elta_lightning.elta import flsa_loss


def test_hand_computed_three_samples():
    # f_a = (1, 0), f_b = (0, 1), f_c = (1, 1); scores [2, 5, 8] -> range 6.
    # M_f: ab = 0, ac = bc = 1/sqrt(2) = 0.70710678, diagonal 1.
    # M_l: ab = 1 - 3/6 = 0.5, ac = 1 - 6/6 = 0, bc = 0.5, diagonal 1.
    # Squared differences (each off-diagonal pair twice): ab 0.25, ac 0.5,
    # bc (0.70710678 - 0.5)^2 = 0.04289322; diagonal 0.
    # Loss = 2 (0.25 + 0.5 + 0.04289322) / 9 = 0.17619849.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss = flsa_loss(features, torch.tensor([2.0, 5.0, 8.0]))
    assert loss.shape == ()
    torch.testing.assert_close(loss, torch.tensor(0.17619849))


def test_hand_computed_two_samples():
    # f = (1, 0), (1, 1): cos = 0.70710678; scores [2, 6]: M_l off-diagonal = 0.
    # Loss = 2 * 0.5 / 4 = 0.25.
    loss = flsa_loss(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(loss, torch.tensor(0.25))


def test_perfect_alignment_is_zero():
    # Orthogonal features for the two extreme scores: M_f = M_l = identity.
    loss = flsa_loss(torch.tensor([[3.0, 0.0], [0.0, 0.5]]), torch.tensor([1.0, 9.0]))
    torch.testing.assert_close(loss, torch.tensor(0.0))


def test_equal_scores_give_exact_zero_with_graph():
    features = torch.randn(5, 7, requires_grad=True)
    loss = flsa_loss(features, torch.full((5,), 6.5))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert features.grad is not None
    assert torch.equal(features.grad, torch.zeros(5, 7))


def test_single_sample_is_zero():
    loss = flsa_loss(torch.randn(1, 4, requires_grad=True), torch.tensor([3.0]))
    assert loss.item() == 0.0


def test_zero_feature_vector_is_finite():
    # f_a = 0 normalises to 0: M_f = [[0, 0], [0, 1]]; scores [2, 6]: M_l = identity.
    # Only the (a, a) entry differs: (0 - 1)^2 / 4 = 0.25.
    features = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = flsa_loss(features, torch.tensor([2.0, 6.0]))
    torch.testing.assert_close(loss, torch.tensor(0.25))
    loss.backward()
    assert torch.isfinite(features.grad).all()


def test_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    scores = torch.rand(6, generator=gen, dtype=torch.float64) * 10
    assert torch.autograd.gradcheck(lambda f: flsa_loss(f, scores), (features,))
    loss = flsa_loss(features, scores)
    loss.backward()
    assert features.grad.abs().sum() > 0


def test_invariant_to_score_affine_map_and_feature_scale():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(8, 16, generator=gen)
    scores = torch.rand(8, generator=gen) * 10
    base = flsa_loss(features, scores)
    assert base > 0
    scaled = flsa_loss(features * torch.rand(8, 1, generator=gen).add(0.1), scores / 10 + 3)
    torch.testing.assert_close(scaled, base)


def test_sensitive_to_label_order():
    # Features rotate from (1, 0) to (0, 1); scores 0 -> 3 -> 10 follow them best. Reversing
    # the scores keeps M_l symmetric in the extremes but moves the middle sample's label
    # similarity to the wrong end: the loss more than doubles (0.022 -> 0.058).
    features = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    aligned = flsa_loss(features, torch.tensor([0.0, 3.0, 10.0]))
    swapped = flsa_loss(features, torch.tensor([10.0, 3.0, 0.0]))
    assert swapped > 2 * aligned


def test_low_precision_features_give_float32_loss():
    features = torch.randn(4, 8).to(torch.bfloat16)
    loss = flsa_loss(features, torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="features must have shape"):
        flsa_loss(torch.randn(4), torch.rand(4))
    with pytest.raises(ValueError, match="scores must have shape"):
        flsa_loss(torch.randn(4, 3), torch.rand(5))
    with pytest.raises(ValueError, match="scores must have shape"):
        flsa_loss(torch.randn(4, 3), torch.rand(4, 10))
