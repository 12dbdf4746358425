"""Unit tests of C-Mixup (label-distance-aware mixup): bin kernel, partners, lambda, mixing."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats
from sync_check import HostSyncRecorder

from elta_lightning.longtail.cmixup import (
    DEFAULT_ALPHA,
    DEFAULT_BANDWIDTH,
    DEFAULT_FEATURE_ALPHA,
    bin_kernel,
    mix,
    sample_lambda,
    sample_partners,
)

# Centres of bins 0, 1 and 5 at width 0.1: 0.05, 0.15, 0.55; bandwidth 0.1, 2 h^2 = 0.02:
#   d = 0.1 -> exp(-0.01 / 0.02) = exp(-0.5)  = 0.60653066
#   d = 0.4 -> exp(-0.16 / 0.02) = exp(-8)    = 3.35462628e-4
#   d = 0.5 -> exp(-0.25 / 0.02) = exp(-12.5) = 3.72665317e-6
HAND_CENTRES = torch.tensor([0.05, 0.15, 0.55])
HAND_KERNEL = torch.tensor(
    [
        [1.0, 0.60653066, 3.72665317e-6],
        [0.60653066, 1.0, 3.35462628e-4],
        [3.72665317e-6, 3.35462628e-4, 1.0],
    ]
)


def _centres(width: float = 0.1) -> torch.Tensor:
    num_bins = round(10 / width)
    return (torch.arange(num_bins, dtype=torch.float32) + 0.5) * width


def _bins(scores: torch.Tensor, width: float = 0.1) -> torch.Tensor:
    num_bins = round(10 / width)
    return torch.floor(scores / width).long().clamp(0, num_bins - 1)


def test_kernel_hand_values():
    kernel = bin_kernel(HAND_CENTRES, 0.1)
    assert kernel.shape == (3, 3) and kernel.dtype == torch.float32
    torch.testing.assert_close(kernel, HAND_KERNEL, rtol=1e-5, atol=1e-9)
    assert torch.equal(kernel, kernel.T)
    assert torch.all(kernel.diagonal() == 1)


def test_kernel_on_framework_bins():
    # 100 bins of width 0.1; bandwidth 0.5: neighbours exp(-0.01 / 0.5) = 0.98019867,
    # 5 bins apart (0.5 = h) exp(-0.5) = 0.60653066, full range (9.9) ~ exp(-196) = 0.
    kernel = bin_kernel(_centres(), DEFAULT_BANDWIDTH)
    assert kernel.shape == (100, 100)
    torch.testing.assert_close(kernel[10, 11], torch.tensor(0.98019867))
    torch.testing.assert_close(kernel[40, 45], torch.tensor(0.60653066))
    assert kernel[0, 99] == 0


def test_partner_probabilities_follow_the_kernel():
    # Batch bins [0, 1, 2, 0] over HAND_KERNEL. Row of anchor 0 (bin 0):
    #   [k00, k01, k02, k00] = [1, 0.60653066, 3.7e-6, 1] / 2.60653439
    #   = [0.38365250, 0.23269750, 0.00000143, 0.38365250]
    # Row of anchor 1 (bin 1): [0.60653066, 1, 3.35e-4, 0.60653066] / 2.21339677
    #   = [0.27402675, 0.45179171, 0.00015156, 0.27402675]
    kernel = HAND_KERNEL
    bins = torch.tensor([0, 1, 2, 0])
    gen = torch.Generator().manual_seed(0)
    n = 6000
    draws = torch.stack([sample_partners(bins, kernel, gen) for _ in range(n)])
    assert draws.shape == (n, 4) and draws.dtype == torch.long
    expected = {
        0: [0.38365250, 0.23269750, 0.00000143, 0.38365250],
        1: [0.27402675, 0.45179171, 0.00015156, 0.27402675],
    }
    for anchor, probs in expected.items():
        freq = torch.bincount(draws[:, anchor], minlength=4).double() / n
        for j, p in enumerate(probs):
            se = math.sqrt(max(p * (1 - p), 1e-6) / n)
            assert abs(freq[j].item() - p) < 5 * se, (anchor, j, freq[j].item(), p)
    # Anchor 2 (bin 2) is far from everybody: it mixes with itself almost surely.
    assert (draws[:, 2] == 2).float().mean() > 0.99


def test_tiny_bandwidth_keeps_partners_in_their_bin():
    # Bins [0, 0, 5, 5], bandwidth 0.01: kernel between bins 0 and 5 is exp(-0.25 / 2e-4) = 0.
    kernel = bin_kernel(_centres(), 0.01)
    bins = torch.tensor([0, 0, 5, 5])
    gen = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_partners(bins, kernel, gen) for _ in range(2000)])
    assert torch.all(draws[:, :2] <= 1) and torch.all(draws[:, 2:] >= 2)
    # Within the bin the two samples are equally likely (j = i allowed): ~1000 each.
    counts = torch.bincount(draws[:, 0], minlength=4)
    assert counts[0] > 850 and counts[1] > 850


def test_partners_are_closer_than_random_mixup():
    # AVA-like scores (mean 5.4, std 0.73), batch 64, bandwidth 0.5: mean |y_i - y_j| of
    # kernel partners is well below that of uniform partners (~0.82 = 2 std / sqrt(pi)).
    gen = torch.Generator().manual_seed(2)
    scores = (5.4 + 0.73 * torch.randn(64, generator=gen)).clamp(0, 10)
    kernel = bin_kernel(_centres(), DEFAULT_BANDWIDTH)
    bins = _bins(scores)
    gaps = torch.cat(
        [(scores - scores[sample_partners(bins, kernel, gen)]).abs() for _ in range(200)]
    )
    uniform = torch.cat(
        [(scores - scores[torch.randint(0, 64, (64,), generator=gen)]).abs() for _ in range(200)]
    )
    assert gaps.mean() < 0.6 * uniform.mean()


def test_single_sample_batch_mixes_with_itself():
    gen = torch.Generator().manual_seed(0)
    partners = sample_partners(torch.tensor([7]), bin_kernel(_centres(), 0.5), gen)
    assert torch.equal(partners, torch.tensor([0]))


def test_seeded_reproducibility():
    gen_scores = torch.Generator().manual_seed(3)
    bins = _bins(torch.rand(32, generator=gen_scores) * 10)
    kernel = bin_kernel(_centres(), 1.0)

    def draw(seed: int):
        gen = torch.Generator().manual_seed(seed)
        return sample_partners(bins, kernel, gen), sample_lambda(0.2, gen)

    (p1, l1), (p2, l2), (p3, l3) = draw(42), draw(42), draw(43)
    assert torch.equal(p1, p2) and torch.equal(l1, l2)
    assert not (torch.equal(p1, p3) and torch.equal(l1, l3))


@pytest.mark.parametrize("alpha", [DEFAULT_ALPHA, 1.0, DEFAULT_FEATURE_ALPHA])
def test_lambda_follows_beta(alpha):
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) -> a = 0.2: 0.17857143, a = 1: 1/12
    # (uniform), a = 2: 0.05. 20k draws: mean and variance within 5 standard errors.
    gen = torch.Generator().manual_seed(7)
    n = 20000
    draws = torch.stack([sample_lambda(alpha, gen) for _ in range(n)]).double()
    assert draws.dtype == torch.float64 and torch.all((draws >= 0) & (draws <= 1))
    variance = 1 / (4 * (2 * alpha + 1))
    mean_se = math.sqrt(variance / n)
    assert abs(draws.mean().item() - 0.5) < 5 * mean_se
    centred_sq = (draws - 0.5).square()
    var_se = centred_sq.std().item() / math.sqrt(n)
    assert abs(centred_sq.mean().item() - variance) < 5 * var_se
    # Kolmogorov-Smirnov distance on a grid inside (0, 1), below the 0.1% critical value
    # 1.95 / sqrt(n). (Float32 rounds the draws within 6e-8 of 1 to exactly 1: for a = 0.2
    # that is ~2% of them, an atom a plain KS test against the continuous CDF would flag.)
    grid = torch.linspace(0.001, 0.999, 999, dtype=torch.float64)
    ecdf = (draws.unsqueeze(0) <= grid.unsqueeze(1)).double().mean(dim=1)
    cdf = torch.from_numpy(stats.beta(alpha, alpha).cdf(grid.numpy()))
    assert (ecdf - cdf).abs().max().item() < 1.95 / math.sqrt(n)


def test_lambda_is_0d_float32_on_generator_device():
    gen = torch.Generator().manual_seed(0)
    lam = sample_lambda(0.2, gen)
    assert lam.shape == () and lam.dtype == torch.float32 and lam.device.type == "cpu"
    lam = sample_lambda(2.0, gen, device="cpu")
    assert 0 <= lam.item() <= 1


def test_small_alpha_never_nan():
    gen = torch.Generator().manual_seed(11)
    draws = torch.stack([sample_lambda(0.01, gen) for _ in range(2000)])
    assert torch.isfinite(draws).all() and torch.all((draws >= 0) & (draws <= 1))


def test_mix_hand_values():
    # Scores: 0.25 * 2 + 0.75 * 6 = 5; vote distributions stay distributions:
    # 0.25 [1, 0, 0] + 0.75 [0, 0.4, 0.6] = [0.25, 0.3, 0.45].
    torch.testing.assert_close(
        mix(torch.tensor([2.0]), torch.tensor([6.0]), 0.25), torch.tensor([5.0])
    )
    mixed = mix(
        torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.4, 0.6]]), torch.tensor(0.25)
    )
    torch.testing.assert_close(mixed, torch.tensor([[0.25, 0.3, 0.45]]))
    # Images (B, C, H, W) with one lam per sample: rows 0.5 and 1.0.
    a = torch.ones(2, 3, 2, 2)
    b = torch.zeros(2, 3, 2, 2)
    mixed = mix(a, b, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(mixed[0], torch.full((3, 2, 2), 0.5))
    torch.testing.assert_close(mixed[1], torch.ones(3, 2, 2))


def test_mix_with_partners_and_gradient():
    # Features (3, 2), partners [2, 0, 1], lam 0.75: row i = 0.75 f_i + 0.25 f_partner(i).
    # d(sum)/d f_k = 0.75 (as anchor) + 0.25 (as the partner of one anchor) = 1 for each k.
    features = torch.tensor([[0.0, 4.0], [8.0, 0.0], [4.0, 4.0]], requires_grad=True)
    partners = torch.tensor([2, 0, 1])
    mixed = mix(features, features[partners], torch.tensor(0.75))
    expected = torch.tensor([[1.0, 4.0], [6.0, 1.0], [5.0, 3.0]])
    torch.testing.assert_close(mixed, expected)
    mixed.sum().backward()
    torch.testing.assert_close(features.grad, torch.ones(3, 2))


def test_mix_is_out_of_place_and_keeps_dtype():
    a = torch.rand(4, 5, dtype=torch.bfloat16)
    b = torch.rand(4, 5, dtype=torch.bfloat16)
    a0, b0 = a.clone(), b.clone()
    mixed = mix(a, b, torch.tensor(0.3))
    assert mixed.dtype == torch.bfloat16
    assert torch.equal(a, a0) and torch.equal(b, b0)
    assert torch.equal(mix(a, b, 1.0), a) and torch.equal(mix(a, b, 0.0), b)


def test_no_host_sync_in_a_training_step():
    # The whole per-batch path: partners, lambda, then mixing images, targets and weights,
    # forward and backward.
    gen = torch.Generator().manual_seed(5)
    kernel = bin_kernel(_centres(), DEFAULT_BANDWIDTH)
    scores = torch.rand(16, generator=gen) * 10
    bins = _bins(scores)
    images = torch.randn(16, 3, 4, 4, requires_grad=True)
    targets = torch.softmax(torch.randn(16, 10), dim=1)
    weights = torch.rand(16)
    with HostSyncRecorder() as rec:
        partners = sample_partners(bins, kernel, gen)
        lam = sample_lambda(DEFAULT_ALPHA, gen, device=images.device)
        mixed_images = mix(images, images[partners], lam)
        mixed_targets = mix(targets, targets[partners], lam)
        mixed_weights = mix(weights, weights[partners], lam)
        loss = (mixed_images.mean(dim=(1, 2, 3)) * mixed_weights).sum() + mixed_targets.sum()
        loss.backward()
    assert rec.syncs == []
    assert images.grad is not None


def test_bad_inputs_raise():
    gen = torch.Generator()
    kernel = bin_kernel(_centres(), 0.5)
    with pytest.raises(ValueError, match="bandwidth"):
        bin_kernel(_centres(), 0.0)
    with pytest.raises(ValueError, match="centres must have shape"):
        bin_kernel(torch.rand(3, 2), 0.5)
    with pytest.raises(ValueError, match="bins must have shape"):
        sample_partners(torch.zeros(2, 2, dtype=torch.long), kernel, gen)
    with pytest.raises(ValueError, match="integer bin indices"):
        sample_partners(torch.tensor([0.5, 1.5]), kernel, gen)
    with pytest.raises(ValueError, match="kernel must be"):
        sample_partners(torch.tensor([0, 1]), torch.rand(3, 4), gen)
    with pytest.raises(TypeError, match="Generator"):
        sample_partners(torch.tensor([0, 1]), kernel, None)
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(-1.0, gen)
    with pytest.raises(TypeError, match="Generator"):
        sample_lambda(0.2, None)
    with pytest.raises(ValueError, match="same shape"):
        mix(torch.rand(4, 3), torch.rand(4, 2), 0.5)
    with pytest.raises(ValueError, match="floating"):
        mix(torch.ones(4, dtype=torch.long), torch.ones(4, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="lam must"):
        mix(torch.rand(4, 3), torch.rand(4, 3), torch.rand(3))
