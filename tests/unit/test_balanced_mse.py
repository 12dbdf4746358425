"""Unit tests of Balanced MSE (BMC, BNI, GAI) and its label priors (GMM fit, bin prior)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d
from sync_check import HostSyncRecorder

from elta_lightning.longtail.balanced_mse import (
    DEFAULT_INIT_NOISE_SIGMA,
    bin_prior,
    bmc_loss,
    bni_loss,
    fit_label_gmm,
    gai_loss,
)

HALF = torch.tensor(0.5)


# ----------------------------------------------------------------------------------------- BMC


def test_bmc_hand_computed_two_samples():
    # var = 0.5 -> 2 var = 1, logits_ij = -(pred_i - t_j)^2. pred [0, 1], target [0, 2]:
    # row 0: [-(0-0)^2, -(0-2)^2] = [0, -4]  -> CE = log(1 + e^-4)      = 0.01814993
    # row 1: [-(1-0)^2, -(1-2)^2] = [-1, -1] -> CE = log 2              = 0.69314718
    # mean = 0.35564855, times 2 var = 1.
    loss = bmc_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]), HALF)
    assert loss.shape == ()
    torch.testing.assert_close(loss, torch.tensor(0.35564855))


def test_bmc_scale_factor_is_two_var():
    # var = 2 -> logits_ij = -(pred_i - t_j)^2 / 4; same pred/target as above:
    # row 0: [0, -1] -> log(1 + e^-1) = 0.31326169; row 1: [-1/4, -1/4] -> log 2 = 0.69314718.
    # mean 0.50320443, times 2 var = 4 -> 2.01281774.
    loss = bmc_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 2.0]), torch.tensor(2.0))
    torch.testing.assert_close(loss, torch.tensor(2.01281774))


def test_bmc_single_sample_is_zero():
    # One logit, softmax = 1: CE = 0 whatever the error.
    loss = bmc_loss(torch.tensor([3.0]), torch.tensor([8.0]), HALF)
    assert loss.item() == 0.0


def test_bmc_global_targets_equal_full_batch_bmc():
    # Two simulated ranks with 3 rows each: each rank's rows against the 6 gathered targets,
    # positive at offset + i. The mean of the two ranks' losses (and of their gradients, as DDP
    # averages them) equals the single-process BMC of the whole batch.
    gen = torch.Generator().manual_seed(0)
    pred = (torch.rand(6, generator=gen, dtype=torch.float64) * 10).requires_grad_()
    target = torch.rand(6, generator=gen, dtype=torch.float64) * 10
    var = torch.tensor(1.5, dtype=torch.float64)
    full = bmc_loss(pred, target, var)
    (full_grad,) = torch.autograd.grad(full, pred)
    rank0 = bmc_loss(pred[:3], target[:3], var, all_targets=target, offset=0)
    rank1 = bmc_loss(pred[3:], target[3:], var, all_targets=target, offset=torch.tensor(3))
    torch.testing.assert_close((rank0 + rank1) / 2, full)
    (ddp_grad,) = torch.autograd.grad((rank0 + rank1) / 2, pred)
    torch.testing.assert_close(ddp_grad, full_grad)
    # A rank's loss is not its local-batch BMC (fewer negatives).
    assert not torch.allclose(rank0, bmc_loss(pred[:3], target[:3], var))


def test_bmc_gradient_reaches_noise_var_through_logits():
    # loss = CE(var) * (2 var).detach(), so d loss / d var = 2 var * d CE / d var: compare
    # with central finite differences of CE = loss / (2 var).
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(5, generator=gen, dtype=torch.float64) * 10
    target = torch.rand(5, generator=gen, dtype=torch.float64) * 10
    sigma = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    var = sigma**2
    var.retain_grad()
    bmc_loss(pred, target, var).backward()
    v, h = 1.44, 1e-6

    def ce(x: float) -> float:
        return bmc_loss(pred, target, torch.tensor(x, dtype=torch.float64)).item() / (2 * x)

    expected = 2 * v * (ce(v + h) - ce(v - h)) / (2 * h)
    assert math.isfinite(var.grad.item()) and var.grad.item() != 0
    assert var.grad.item() == pytest.approx(expected, rel=1e-5)
    assert sigma.grad.item() == pytest.approx(expected * 2 * 1.2, rel=1e-5)


def test_bmc_prediction_gradient_hand_computed():
    # d loss_i / d pred_i = 2v [(p - t_i) / v - sum_j w_ij (p - t_j) / v] = 2 (E_w[t] - t_i) with
    # w_i = softmax(logits_i); divided by B for the batch mean. pred [0, 1], target [0, 2], v 0.5:
    # row 0: w = [1, e^-4] / (1 + e^-4) -> E_w[t] = 2 / (1 + e^4) = 0.03597242 -> grad 0.03597242
    # row 1: w = [1/2, 1/2] -> E_w[t] = 1 -> grad (2 / 2) (1 - 2) = -1.
    # (Row 0's prediction is pushed away from the other target: the balancing term.)
    pred = torch.tensor([0.0, 1.0], requires_grad=True)
    bmc_loss(pred, torch.tensor([0.0, 2.0]), HALF).backward()
    torch.testing.assert_close(pred.grad, torch.tensor([0.03597242, -1.0]))


def test_bmc_low_precision_gives_float32():
    loss = bmc_loss(torch.rand(4).bfloat16(), torch.rand(4), HALF)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_bmc_bad_shapes_raise():
    with pytest.raises(ValueError, match="pred must have shape"):
        bmc_loss(torch.rand(4, 1), torch.rand(4, 1), HALF)
    with pytest.raises(ValueError, match="target must have shape"):
        bmc_loss(torch.rand(4), torch.rand(5), HALF)
    with pytest.raises(ValueError, match="noise_var must be a 0-dim tensor"):
        bmc_loss(torch.rand(4), torch.rand(4), torch.rand(1))
    with pytest.raises(ValueError, match="all_targets must have shape"):
        bmc_loss(torch.rand(4), torch.rand(4), HALF, all_targets=torch.rand(3))


def test_bmc_no_host_sync():
    sigma = torch.tensor(DEFAULT_INIT_NOISE_SIGMA, requires_grad=True)
    pred = torch.rand(8, requires_grad=True)
    target = torch.rand(8)
    with HostSyncRecorder() as rec:
        loss = bmc_loss(pred, target, sigma**2)
        loss = loss + bmc_loss(
            pred[4:], target[4:], sigma**2, all_targets=target, offset=torch.tensor(4)
        )
        loss.backward()
    assert rec.syncs == []
    assert torch.isfinite(sigma.grad) and torch.isfinite(pred.grad).all()


# ----------------------------------------------------------------------------------------- BNI


def test_bni_hand_computed_two_bins():
    # var = 0.5 (2 var = 1), centres [0, 1], prior [0.25, 0.75]; pred 0, target 1:
    # mse term (0 - 1)^2 = 1; balancing log(0.25 e^-(0-0)^2 + 0.75 e^-(0-1)^2)
    #   = log(0.25 + 0.27590958) = -0.64262598; loss = 0.35737402.
    centres, prior = torch.tensor([0.0, 1.0]), torch.tensor([0.25, 0.75])
    loss = bni_loss(torch.tensor([0.0]), torch.tensor([1.0]), HALF, centres, prior)
    torch.testing.assert_close(loss, torch.tensor(0.35737402))


def test_bni_is_batch_mean_and_can_be_negative():
    # pred 0.5, target 0.5: mse term 0; balancing log(0.25 e^-0.25 + 0.75 e^-0.25) = -0.25.
    # Batch [pred 0 / target 1, pred 0.5 / target 0.5]: mean (0.35737402 - 0.25) = 0.05368701.
    centres, prior = torch.tensor([0.0, 1.0]), torch.tensor([0.25, 0.75])
    single = bni_loss(torch.tensor([0.5]), torch.tensor([0.5]), HALF, centres, prior)
    torch.testing.assert_close(single, torch.tensor(-0.25))
    batch = bni_loss(torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.5]), HALF, centres, prior)
    torch.testing.assert_close(batch, torch.tensor(0.05368701))


def test_bni_empty_bins_contribute_nothing_with_finite_gradient():
    # A third bin with p = 0 (any centre) leaves the value unchanged and every gradient finite.
    pred = torch.tensor([0.0], requires_grad=True)
    sigma = torch.tensor(math.sqrt(0.5), requires_grad=True)
    prior = torch.tensor([0.25, 0.75, 0.0], requires_grad=True)
    centres = torch.tensor([0.0, 1.0, 2.0])
    loss = bni_loss(pred, torch.tensor([1.0]), sigma**2, centres, prior)
    torch.testing.assert_close(loss, torch.tensor(0.35737402))
    loss.backward()
    for grad in (pred.grad, sigma.grad, prior.grad):
        assert torch.isfinite(grad).all()
    assert prior.grad[2] == 0


def test_bni_bad_shapes_raise():
    with pytest.raises(ValueError, match="centres and prior"):
        bni_loss(torch.rand(3), torch.rand(3), HALF, torch.rand(4), torch.rand(5))
    with pytest.raises(ValueError, match="pred must have shape"):
        bni_loss(torch.rand(0), torch.rand(0), HALF, torch.rand(4), torch.rand(4))


def test_bni_no_host_sync():
    sigma = torch.tensor(0.3, requires_grad=True)
    pred = (torch.rand(8) * 10).requires_grad_()
    counts = torch.tensor([0, 3, 5, 0, 1, 0, 0, 2, 4, 0])
    centres = (torch.arange(10) + 0.5) * 1.0
    prior = bin_prior(counts)
    with HostSyncRecorder() as rec:
        bni_loss(pred, torch.rand(8) * 10, sigma**2, centres, prior).backward()
    assert rec.syncs == []
    assert torch.isfinite(pred.grad).all() and torch.isfinite(sigma.grad)


# ----------------------------------------------------------------------------------------- GAI


def test_gai_hand_computed_one_component():
    # var = 0.5 (2 var = 1); GMM phi = 1, mu = 2, v = 0.5 (so v + var = 1); pred 1, target 0:
    # mse term (1 - 0)^2 / 1 + 0.5 log 0.5 = 1 - 0.34657359 = 0.65342641
    # balancing log 1 - 0.5 log 1 - (1 - 2)^2 / (2 * 1) = -0.5; loss 0.15342641.
    one = torch.tensor([1.0])
    loss = gai_loss(one, torch.tensor([0.0]), HALF, one, torch.tensor([2.0]), torch.tensor([0.5]))
    torch.testing.assert_close(loss, torch.tensor(0.15342641))


def test_gai_with_point_components_equals_bni():
    # With v_k = 0 the 1/2 log var terms cancel and GAI is BNI with centres mu, prior phi.
    gen = torch.Generator().manual_seed(2)
    pred = torch.rand(6, generator=gen) * 10
    target = torch.rand(6, generator=gen) * 10
    means = torch.tensor([2.0, 5.0, 7.5])
    weights = torch.tensor([0.2, 0.5, 0.3])
    var = torch.tensor(0.7)
    gai = gai_loss(pred, target, var, weights, means, torch.zeros(3))
    torch.testing.assert_close(gai, bni_loss(pred, target, var, means, weights))


def test_gai_zero_weight_component_is_ignored_with_finite_gradient():
    one = torch.tensor([1.0], requires_grad=True)
    weights = torch.tensor([1.0, 0.0], requires_grad=True)
    loss = gai_loss(
        one, torch.tensor([0.0]), HALF, weights, torch.tensor([2.0, 9.0]), torch.tensor([0.5, 0.1])
    )
    torch.testing.assert_close(loss, torch.tensor(0.15342641))
    loss.backward()
    assert torch.isfinite(one.grad).all() and torch.isfinite(weights.grad).all()


def test_gai_bad_shapes_raise():
    with pytest.raises(ValueError, match="gmm_weights, gmm_means and gmm_vars"):
        gai_loss(torch.rand(3), torch.rand(3), HALF, torch.rand(2), torch.rand(2), torch.rand(3))


def test_gai_no_host_sync():
    sigma = torch.tensor(0.5, requires_grad=True)
    pred = (torch.rand(8) * 10).requires_grad_()
    weights, means, variances = (
        torch.tensor(a, dtype=torch.float32)
        for a in fit_label_gmm(np.linspace(1.0, 9.0, 200), components=3)
    )
    with HostSyncRecorder() as rec:
        gai_loss(pred, torch.rand(8) * 10, sigma**2, weights, means, variances).backward()
    assert rec.syncs == []
    assert torch.isfinite(pred.grad).all() and torch.isfinite(sigma.grad)


# ------------------------------------------------------------------------------------ GMM fit


def test_gmm_recovers_two_separated_gaussians():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(3.0, 0.4, 3000), rng.normal(7.0, 0.6, 7000)])
    weights, means, variances = fit_label_gmm(scores, components=2)
    np.testing.assert_allclose(means, [3.0, 7.0], atol=0.05)
    np.testing.assert_allclose(weights, [0.3, 0.7], atol=0.02)
    np.testing.assert_allclose(np.sqrt(variances), [0.4, 0.6], atol=0.03)
    assert weights.sum() == pytest.approx(1.0)


def test_gmm_eight_components_is_deterministic_and_sorted():
    rng = np.random.default_rng(1)
    scores = np.clip(rng.normal(5.5, 1.2, 2000), 0, 10)
    first = fit_label_gmm(scores)
    second = fit_label_gmm(scores)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    weights, means, variances = first
    assert weights.shape == means.shape == variances.shape == (8,)
    assert np.all(np.diff(means) >= 0) and np.all(variances > 0)
    assert weights.sum() == pytest.approx(1.0)


def test_gmm_on_repeated_discrete_labels_respects_variance_floor():
    # Two values only, four components: the components split between the two points and shrink
    # to the floor instead of to variance 0 (which would give inf in the density).
    scores = np.repeat([3.0, 7.0], [40, 60])
    weights, means, variances = fit_label_gmm(scores, components=4, var_floor=1e-4)
    assert np.all(np.isfinite(weights)) and np.all(np.isfinite(means))
    assert np.all(variances >= 1e-4)
    assert weights[means < 5].sum() == pytest.approx(0.4, abs=1e-6)


def test_gmm_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least 8 scores"):
        fit_label_gmm(np.arange(5.0))
    with pytest.raises(ValueError, match="finite"):
        fit_label_gmm(np.array([1.0, np.nan, 3.0]), components=2)
    with pytest.raises(ValueError, match="components must be"):
        fit_label_gmm(np.arange(5.0), components=0)


# ---------------------------------------------------------------------------------- bin prior


def test_bin_prior_normalises_counts():
    prior = bin_prior(torch.tensor([2, 0, 6, 0]))
    torch.testing.assert_close(prior, torch.tensor([0.25, 0.0, 0.75, 0.0]))


def test_bin_prior_lds_zero_padding_hand_value():
    # counts [4, 0, 0, 2], kernel [0.5, 1, 0.5], zero padding:
    # [4, 0.5*4, 0.5*2, 2] = [4, 2, 1, 2], total 9.
    prior = bin_prior(torch.tensor([4, 0, 0, 2]), [0.5, 1.0, 0.5])
    torch.testing.assert_close(prior, torch.tensor([4.0, 2.0, 1.0, 2.0]) / 9)


def test_bin_prior_matches_scipy_convolve1d_with_asymmetric_kernel():
    counts = np.array([0.0, 5.0, 1.0, 0.0, 0.0, 3.0, 0.0])
    kernel = np.array([0.2, 1.0, 0.5])
    smoothed = convolve1d(counts, weights=kernel, mode="constant")
    prior = bin_prior(torch.tensor(counts), torch.tensor(kernel))
    assert prior.dtype == torch.float64
    np.testing.assert_allclose(prior.numpy(), smoothed / smoothed.sum(), rtol=1e-12)


def test_bin_prior_bad_inputs_raise():
    with pytest.raises(ValueError, match="positive total"):
        bin_prior(torch.zeros(4))
    with pytest.raises(ValueError, match="non-negative"):
        bin_prior(torch.tensor([1.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="odd length"):
        bin_prior(torch.ones(4), [0.5, 0.5])
    with pytest.raises(ValueError, match="counts must have shape"):
        bin_prior(torch.ones(2, 2))
