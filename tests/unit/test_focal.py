"""Unit tests of Focal-R (error-aware modulation of per-sample losses)."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest
import torch
from sync_check import HostSyncRecorder

from elta_lightning.longtail.focal import DEFAULT_BETA, DEFAULT_GAMMA, focal_factor, focal_loss

LN3 = math.log(3.0)


def test_sigmoid_factor_by_hand():
    # sigmoid(ln 3) = 3 / (3 + 1) = 0.75 -> 2 * 0.75 - 1 = 0.5; zero error -> 0.
    factor = focal_factor(torch.tensor([0.0, LN3]), beta=1.0, gamma=1.0, activation="sigmoid")
    torch.testing.assert_close(factor, torch.tensor([0.0, 0.5]))
    # gamma 2 squares it; beta 2 on error ln(3) / 2 gives the same beta * |e|.
    factor = focal_factor(torch.tensor([0.0, LN3]), beta=1.0, gamma=2.0)
    torch.testing.assert_close(factor, torch.tensor([0.0, 0.25]))
    torch.testing.assert_close(focal_factor(torch.tensor([LN3 / 2]), beta=2.0), torch.tensor([0.5]))


def test_tanh_factor_by_hand():
    # tanh(ln 3) = (9 - 1) / (9 + 1) = 0.8.
    factor = focal_factor(torch.tensor([0.0, LN3]), beta=1.0, gamma=1.0, activation="tanh")
    torch.testing.assert_close(factor, torch.tensor([0.0, 0.8]))
    # 2 sigmoid(x) - 1 = tanh(x / 2): sigmoid with beta equals tanh with beta / 2.
    errors = torch.linspace(0, 5, 11)
    torch.testing.assert_close(
        focal_factor(errors, beta=0.6, gamma=1.5, activation="sigmoid"),
        focal_factor(errors, beta=0.3, gamma=1.5, activation="tanh"),
    )


def test_signed_error_gives_the_same_factor():
    errors = torch.tensor([-2.0, -0.1, 0.3, 1.0])
    torch.testing.assert_close(focal_factor(errors), focal_factor(errors.abs()))


def test_defaults_re_express_the_age_beta_on_0_to_10_scores():
    # Reference beta 0.2 on ages (errors in years, ~0..100); on 0..10 scores errors are 10x
    # smaller, so beta 2.0 gives the same factor for the same relative error.
    assert (DEFAULT_BETA, DEFAULT_GAMMA) == (2.0, 1.0)
    years = torch.tensor([0.0, 1.0, 5.0, 12.0, 40.0])
    torch.testing.assert_close(focal_factor(years / 10), focal_factor(years, beta=0.2))


def test_focal_loss_by_hand_with_and_without_weights():
    # beta 1: factors [0, 0.5, 0.5] for errors [0, ln 3, ln 3]; l * f = [0, 2, 3].
    losses = torch.tensor([2.0, 4.0, 6.0])
    errors = torch.tensor([0.0, LN3, LN3])
    # Mean: 5 / 3. Weights [1, 1, 2]: (0 + 2 + 2 * 3) / (1 + 1 + 2) = 2.
    torch.testing.assert_close(focal_loss(losses, errors, beta=1.0), torch.tensor(5 / 3))
    weight = torch.tensor([1.0, 1.0, 2.0])
    torch.testing.assert_close(focal_loss(losses, errors, 1.0, weight=weight), torch.tensor(2.0))
    # tanh: factors [0, 0.8, 0.8] -> l * f = [0, 3.2, 4.8], mean 8 / 3.
    torch.testing.assert_close(
        focal_loss(losses, errors, beta=1.0, activation="tanh"), torch.tensor(8 / 3)
    )


def test_focal_l1_matches_the_reference_when_weights_average_one():
    # Reference: mean_i(w_i |e_i| (2 sigmoid(beta |e_i|) - 1)^gamma); equals sum w l f / sum w
    # when mean(w) = 1.
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.rand(16, generator=gen) * 10, torch.rand(16, generator=gen) * 10
    weight = torch.rand(16, generator=gen) + 0.5
    weight = weight / weight.mean()
    error = (pred - target).abs()
    reference = torch.mean(weight * error * (2 * torch.sigmoid(0.2 * error) - 1))
    torch.testing.assert_close(focal_loss(error, error, beta=0.2, weight=weight), reference)


def test_gradient_flows_through_the_factor():
    # One sample, L1 base, e = pred - target = ln 3, beta 1: loss = e * (2 sigmoid(e) - 1).
    # d/de = (2 sigmoid(e) - 1) + e * 2 sigmoid(e) (1 - sigmoid(e)) = 0.5 + ln 3 * 2 * 0.75 * 0.25
    #      = 0.5 + 0.375 ln 3 = 0.91198 (a detached factor would give 0.5).
    pred = torch.tensor([LN3], dtype=torch.float64, requires_grad=True)
    target = torch.zeros(1, dtype=torch.float64)
    error = (pred - target).abs()
    focal_loss(error, error, beta=1.0).backward()
    torch.testing.assert_close(pred.grad, torch.tensor([0.5 + 0.375 * LN3], dtype=torch.float64))


def test_gradcheck_and_no_nan_at_zero_error():
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(8, generator=gen, dtype=torch.float64).requires_grad_(True)
    target = torch.rand(8, generator=gen, dtype=torch.float64)
    weight = torch.rand(8, generator=gen, dtype=torch.float64) + 0.1

    def loss(p: torch.Tensor) -> torch.Tensor:
        return focal_loss((p - target) ** 2, (p - target).abs(), 2.0, 1.5, "tanh", weight)

    assert torch.autograd.gradcheck(loss, (pred,))
    # An exactly-zero error with gamma < 1 (x ** gamma has an infinite slope at 0) or gamma = 0:
    # finite gradients, and gamma 0 turns the factor off (plain mean).
    for gamma in (0.0, 0.5, 1.0, 2.0):
        p = torch.tensor([1.0, 2.0], requires_grad=True)
        per_sample = torch.tensor([0.7, 0.0]) + (p - 2.0).abs()
        value = focal_loss(per_sample, (p - 2.0).abs(), gamma=gamma)
        value.backward()
        assert torch.isfinite(p.grad).all(), gamma
    torch.testing.assert_close(
        focal_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), gamma=0.0), torch.tensor(2.0)
    )


def test_no_host_sync():
    pred = torch.rand(8, requires_grad=True)
    target, weight = torch.rand(8), torch.rand(8)
    with HostSyncRecorder() as rec:
        error = (pred - target).abs()
        loss = focal_loss(error, error, weight=weight)
        loss.backward()
        focal_factor(error.detach(), gamma=0.5, activation="tanh")
    assert rec.syncs == []


def test_bad_arguments_raise():
    errors = torch.ones(3)
    with pytest.raises(ValueError, match="activation"):
        focal_factor(errors, activation="relu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        focal_factor(errors, beta=0.0)
    with pytest.raises(ValueError, match="gamma"):
        focal_factor(errors, gamma=-1.0)
    with pytest.raises(ValueError, match="per_sample_loss must have shape"):
        focal_loss(torch.ones(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="abs_error must have shape"):
        focal_loss(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="weight"):
        focal_loss(torch.ones(3), torch.ones(3), weight=torch.ones(2))


def test_docstring_examples_run():
    module = importlib.import_module("elta_lightning.longtail.focal")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
