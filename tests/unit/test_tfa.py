"""Unit tests of TFA (tail-oriented feature augmentation): sampling law, mixing, validation."""

from __future__ import annotations

import math

import pytest
import torch

from elta_lightning.elta import (
    TFAResult,
    resolve_num_mixed,
    sample_mix_pairs,
    tfa_mix,
    tfa_sampling_logits,
    tfa_sampling_probabilities,
)

TAU1_GRID = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
TAU2_GRID = [2, 3, 4, 5, 6, 7, 10]

# Hand computation for scores [2, 5, 8], tau1 = 0.5, tau2 = 2:
#   s_bar = 5, |s_bar - s| = [3, 0, 3], first-stage logits = [6, 0, 6]
#   P(i) = [e^6, 1, e^6] / (2 e^6 + 1) = [0.49938108, 0.00123784, 0.49938108]
#   |s_i - s_j|: d01 = 3, d02 = 6, d12 = 3 -> logits 2 / 3.01 = 0.66445183, 2 / 6.01 = 0.33277870
#   row 0: P(1|0) = sigmoid(0.66445183 - 0.33277870) = 0.58216642, P(2|0) = 0.41783358
#   row 1: both partners at distance 3 -> P(0|1) = P(2|1) = 0.5
#   row 2: mirror of row 0 -> P(0|2) = 0.41783358, P(1|2) = 0.58216642
#   lambda(i, j) = P(i) / (P(i) + P(j)): lam(0, 1) = e^6 / (e^6 + 1) = 0.99752738,
#   lam(1, 0) = 1 / (e^6 + 1) = 0.00247262, lam(0, 2) = lam(2, 0) = 0.5
HAND_SCORES = torch.tensor([2.0, 5.0, 8.0])
HAND_P_FIRST = torch.tensor([0.49938108, 0.00123784, 0.49938108])
HAND_P_PARTNER = torch.tensor(
    [
        [0.0, 0.58216642, 0.41783358],
        [0.5, 0.0, 0.5],
        [0.41783358, 0.58216642, 0.0],
    ]
)
HAND_LAM = torch.tensor(
    [
        [math.nan, 0.99752738, 0.5],
        [0.00247262, math.nan, 0.00247262],
        [0.5, 0.99752738, math.nan],
    ]
)


def _reference_law(scores: list[float], tau1: float, tau2: float):
    """The sampling law in plain Python floats (independent of the module under test)."""
    n = len(scores)
    mean = sum(scores) / n
    w = [math.exp(abs(mean - s) / tau1) for s in scores]
    p_first = [x / sum(w) for x in w]
    p_partner = []
    for i in range(n):
        row = [
            0.0 if j == i else math.exp(tau2 / (abs(scores[i] - scores[j]) + 0.01))
            for j in range(n)
        ]
        p_partner.append([x / sum(row) for x in row])
    return p_first, p_partner


def test_logits_hand_computed():
    first, partner = tfa_sampling_logits(HAND_SCORES, tau1=0.5, tau2=2.0)
    torch.testing.assert_close(first, torch.tensor([6.0, 0.0, 6.0]))
    a, b = 2 / 3.01, 2 / 6.01
    expected = torch.tensor([[-math.inf, a, b], [a, -math.inf, a], [b, a, -math.inf]])
    torch.testing.assert_close(partner, expected)


def test_probabilities_hand_computed():
    p_first, p_partner = tfa_sampling_probabilities(HAND_SCORES, tau1=0.5, tau2=2.0)
    torch.testing.assert_close(p_first, HAND_P_FIRST, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(p_partner, HAND_P_PARTNER, atol=1e-6, rtol=1e-5)
    assert torch.all(p_partner.diagonal() == 0)


def test_lambda_hand_computed():
    gen = torch.Generator().manual_seed(0)
    first, partner, lam = sample_mix_pairs(HAND_SCORES, 500, tau1=0.5, tau2=2.0, generator=gen)
    torch.testing.assert_close(lam, HAND_LAM[first, partner], atol=1e-6, rtol=1e-5)
    # The near-mean sample 1 has P(1) ~ 0.001: it is rarely a first index but often a partner.
    assert (first == 1).sum() < 10
    assert (partner == 1).sum() > 200


def test_sampling_law_statistically():
    scores = [4.0, 5.0, 5.5, 6.5]
    tau1, tau2, n = 0.5, 2.0, 20000
    p_first, p_partner = _reference_law(scores, tau1, tau2)
    gen = torch.Generator().manual_seed(1234)
    first, partner, lam = sample_mix_pairs(torch.tensor(scores), n, tau1, tau2, generator=gen)
    assert first.shape == partner.shape == lam.shape == (n,)
    assert first.dtype == partner.dtype == torch.long
    assert torch.all(first != partner)

    # First index: each frequency within 5 binomial standard errors of P(i).
    counts = torch.bincount(first, minlength=4).double()
    for i, p in enumerate(p_first):
        se = math.sqrt(p * (1 - p) / n)
        assert abs(counts[i].item() / n - p) < 5 * se, (i, counts[i].item() / n, p)

    # Partner given first: frequencies within 5 standard errors of P(j | i), n_i draws each.
    for i in range(4):
        n_i = int((first == i).sum())
        assert n_i > 300  # every row is exercised (smallest P(i) is ~0.06)
        cond = torch.bincount(partner[first == i], minlength=4).double() / n_i
        for j, p in enumerate(p_partner[i]):
            se = math.sqrt(max(p * (1 - p), 1e-12) / n_i)
            assert abs(cond[j].item() - p) < 5 * se + 1e-12, (i, j, cond[j].item(), p)

    # Lambda: exact per draw, and its empirical mean matches the expectation.
    expected_lam = torch.tensor(
        [[p_first[i] / (p_first[i] + p_first[j]) for j in range(4)] for i in range(4)]
    )
    torch.testing.assert_close(lam, expected_lam[first, partner].float(), atol=1e-6, rtol=1e-5)
    e_lam = sum(
        p_first[i] * p_partner[i][j] * expected_lam[i, j].item()
        for i in range(4)
        for j in range(4)
        if i != j
    )
    se_lam = lam.double().std().item() / math.sqrt(n)
    assert abs(lam.double().mean().item() - e_lam) < 5 * se_lam


@pytest.mark.parametrize("batch", [2, 3, 8])
def test_all_equal_scores_uniform(batch):
    scores = torch.full((batch,), 5.0)
    p_first, p_partner = tfa_sampling_probabilities(scores, tau1=0.05, tau2=10.0)
    torch.testing.assert_close(p_first, torch.full((batch,), 1 / batch))
    expected = (torch.ones(batch, batch) - torch.eye(batch)) / (batch - 1)
    torch.testing.assert_close(p_partner, expected)
    gen = torch.Generator().manual_seed(3)
    first, partner, lam = sample_mix_pairs(scores, 4000, 0.05, 10.0, generator=gen)
    assert torch.all(first != partner)
    torch.testing.assert_close(lam, torch.full_like(lam, 0.5))
    # Every (i, j != i) pair shows up with roughly equal frequency 1 / (B (B - 1)).
    pairs = torch.bincount(first * batch + partner, minlength=batch * batch).view(batch, batch)
    p = 1 / (batch * (batch - 1))
    se = math.sqrt(p * (1 - p) / 4000)
    off = pairs[~torch.eye(batch, dtype=torch.bool)].double() / 4000
    assert torch.all((off - p).abs() < 5 * se)


def test_tau2_10_with_coinciding_scores_is_finite():
    # The authors' exp(tau2 / (0 + 0.01)) = exp(1000) overflowed here.
    scores = torch.tensor([5.0, 5.0, 7.0, 2.0])
    p_first, p_partner = tfa_sampling_probabilities(scores, tau1=0.05, tau2=10.0)
    assert torch.isfinite(p_first).all() and torch.isfinite(p_partner).all()
    torch.testing.assert_close(p_partner.sum(1), torch.ones(4))
    # The two coinciding samples pick each other almost surely.
    assert p_partner[0, 1] > 0.999 and p_partner[1, 0] > 0.999
    res = tfa_mix(torch.randn(4, 6), torch.rand(4), scores, 16, 0.05, 10.0)
    assert torch.isfinite(res.features).all() and torch.isfinite(res.lam).all()


@pytest.mark.parametrize("tau1", TAU1_GRID)
@pytest.mark.parametrize("tau2", TAU2_GRID)
def test_authors_grid_is_stable(tau1, tau2):
    # Extremes of the 0..10 scale, exact duplicates and near-duplicates.
    scores = torch.tensor([0.0, 0.0, 10.0, 10.0, 5.0, 5.0, 5.001, 9.9])
    p_first, p_partner = tfa_sampling_probabilities(scores, tau1, tau2)
    assert torch.isfinite(p_first).all() and torch.isfinite(p_partner).all()
    torch.testing.assert_close(p_first.sum(), torch.tensor(1.0))
    torch.testing.assert_close(p_partner.sum(1), torch.ones(8))
    assert torch.all(p_partner.diagonal() == 0)
    gen = torch.Generator().manual_seed(0)
    first, partner, lam = sample_mix_pairs(scores, 64, tau1, tau2, generator=gen)
    assert torch.all(first != partner)
    assert torch.isfinite(lam).all() and torch.all((lam >= 0) & (lam <= 1))


def test_gradient_flows_through_mixed_features():
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(5, 3, requires_grad=True)
    scores = torch.tensor([1.0, 3.0, 5.0, 7.0, 9.0])
    res = tfa_mix(features, torch.rand(5), scores, 1, 0.5, 2.0, generator=gen)
    assert res.features.shape == (6, 3)
    torch.testing.assert_close(res.features[:5], features.detach())
    res.features[5:].sum().backward()
    i, j, lam = res.first.item(), res.partner.item(), res.lam.item()
    expected = torch.zeros(5, 3)
    expected[i] = lam
    expected[j] = 1 - lam
    torch.testing.assert_close(features.grad, expected)
    assert not res.lam.requires_grad


def test_seeded_reproducibility():
    scores = torch.rand(16, generator=torch.Generator().manual_seed(5)) * 10
    draws = [
        sample_mix_pairs(scores, 200, 0.2, 7.0, generator=torch.Generator().manual_seed(seed))
        for seed in (42, 42, 43)
    ]
    for a, b in zip(draws[0], draws[1], strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(draws[0][0], draws[2][0])


def test_distribution_targets_are_mixed_whole():
    gen = torch.Generator().manual_seed(11)
    batch, dim, k, m = 6, 4, 10, 5
    targets = torch.softmax(torch.randn(batch, k), dim=1)
    levels = torch.arange(1.0, 11.0)
    scores = targets @ levels
    features = torch.randn(batch, dim)
    res = tfa_mix(features, targets, scores, m, 0.3, 4.0, generator=gen)
    assert isinstance(res, TFAResult)
    assert res.features.shape == (batch + m, dim)
    assert res.targets.shape == (batch + m, k)
    assert res.scores.shape == (batch + m,)
    torch.testing.assert_close(res.targets[:batch], targets)
    lam = res.lam.unsqueeze(1)
    i, j = res.first, res.partner
    torch.testing.assert_close(res.targets[batch:], lam * targets[i] + (1 - lam) * targets[j])
    torch.testing.assert_close(res.features[batch:], lam * features[i] + (1 - lam) * features[j])
    torch.testing.assert_close(res.targets[batch:].sum(1), torch.ones(m))
    # Mixed scores = lam s_i + (1 - lam) s_j = mean score of the mixed distribution.
    torch.testing.assert_close(res.scores[batch:], res.lam * scores[i] + (1 - res.lam) * scores[j])
    torch.testing.assert_close(res.scores[batch:], res.targets[batch:] @ levels)


def test_scalar_targets():
    gen = torch.Generator().manual_seed(2)
    scores = torch.tensor([0.2, 0.9, 0.5, 0.45]) * 10  # AADB scores converted to 0..10
    targets = scores / 10  # a head predicting score / 10
    res = tfa_mix(torch.randn(4, 8), targets, scores, 3, 0.2, 7.0, generator=gen)
    assert res.targets.shape == (7,)
    expected = res.lam * targets[res.first] + (1 - res.lam) * targets[res.partner]
    torch.testing.assert_close(res.targets[4:], expected)
    torch.testing.assert_close(res.scores[4:] / 10, res.targets[4:])


def test_zero_mixed_returns_batch_unchanged():
    features, targets, scores = torch.randn(3, 2), torch.rand(3), torch.tensor([1.0, 2.0, 3.0])
    res = tfa_mix(features, targets, scores, 0, 0.5, 2.0)
    assert res.features.shape == (3, 2) and res.first.numel() == 0
    torch.testing.assert_close(res.features, features)


def test_batch_of_one_raises():
    with pytest.raises(ValueError, match="at least 2 samples"):
        tfa_mix(torch.randn(1, 4), torch.rand(1), torch.tensor([5.0]), 1, 0.5, 2.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sample_mix_pairs(torch.tensor([5.0]), 1, 0.5, 2.0)


@pytest.mark.parametrize(
    ("tau1", "tau2", "name"),
    [
        (0.0, 2.0, "tau1"),
        (-0.5, 2.0, "tau1"),
        (math.nan, 2.0, "tau1"),
        (0.5, 0.0, "tau2"),
        (0.5, -2.0, "tau2"),
        (0.5, math.inf, "tau2"),
    ],
)
def test_bad_temperatures_raise(tau1, tau2, name):
    with pytest.raises(ValueError, match=f"{name} must be a finite number > 0"):
        sample_mix_pairs(HAND_SCORES, 1, tau1, tau2)


def test_bad_shapes_and_counts_raise():
    with pytest.raises(ValueError, match="num_mixed"):
        sample_mix_pairs(HAND_SCORES, -1, 0.5, 2.0)
    with pytest.raises(ValueError, match="shape \\(B,\\)"):
        sample_mix_pairs(HAND_SCORES.view(3, 1), 1, 0.5, 2.0)
    with pytest.raises(ValueError, match="batch dimension"):
        tfa_mix(torch.randn(3, 2), torch.rand(4), HAND_SCORES, 1, 0.5, 2.0)
    with pytest.raises(ValueError, match="features must have shape"):
        tfa_mix(torch.randn(3), torch.rand(3), HAND_SCORES, 1, 0.5, 2.0)


def test_resolve_num_mixed():
    assert resolve_num_mixed(48) == 1
    assert resolve_num_mixed(48, count=3) == 3
    assert resolve_num_mixed(48, ratio=0.25) == 12
    assert resolve_num_mixed(16, ratio=0.25) == 4
    assert resolve_num_mixed(3, ratio=0.01) == 1
    with pytest.raises(ValueError, match="not both"):
        resolve_num_mixed(48, count=2, ratio=0.25)
    with pytest.raises(ValueError, match="ratio"):
        resolve_num_mixed(48, ratio=0.0)
    with pytest.raises(ValueError, match="num_mixed"):
        resolve_num_mixed(48, count=-1)
    with pytest.raises(ValueError, match="batch_size"):
        resolve_num_mixed(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_no_host_sync_and_seeded():
    device = torch.device("cuda")
    features = torch.randn(48, 64, device=device, requires_grad=True)
    scores = torch.rand(48, device=device) * 10
    targets = torch.softmax(torch.randn(48, 10, device=device), dim=1)
    gen = torch.Generator(device=device).manual_seed(0)
    tfa_mix(features, targets, scores, 12, 0.5, 2.0, generator=gen)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        res = tfa_mix(features, targets, scores, 12, 0.5, 2.0, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert res.features.device.type == "cuda"

    def draw(seed: int) -> TFAResult:
        gen = torch.Generator(device=device).manual_seed(seed)
        return tfa_mix(features, targets, scores, 12, 0.5, 2.0, generator=gen)

    a, b = draw(7), draw(7)
    assert torch.equal(a.first, b.first) and torch.equal(a.partner, b.partner)
