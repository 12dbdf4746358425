"""Unit tests of elta_lightning.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from elta_lightning.losses import (
    emd_loss,
    emd_per_sample,
    l1_loss,
    mean_score,
    mse_loss,
    weighted_mean,
)

# Two samples over K = 3 ordered levels.
#   sample 0: p = [0.2, 0.5, 0.3], q = [0.5, 0.5, 0.0]
#             CDF_p = [0.2, 0.7, 1.0], CDF_q = [0.5, 1.0, 1.0], |diff| = [0.3, 0.3, 0.0]
#             EMD_1 = (0.3 + 0.3 + 0) / 3 = 0.2
#             EMD_2 = sqrt((0.09 + 0.09 + 0) / 3) = sqrt(0.06)
#   sample 1: p = [0.0, 0.0, 1.0], q = [1.0, 0.0, 0.0]
#             CDF_p = [0, 0, 1], CDF_q = [1, 1, 1], |diff| = [1, 1, 0]
#             EMD_1 = 2 / 3
#             EMD_2 = sqrt(2 / 3)
P = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.0, 1.0]])
Q = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
EMD1 = [0.2, 2.0 / 3.0]
EMD2 = [math.sqrt(0.06), math.sqrt(2.0 / 3.0)]


def test_emd_per_sample_r1_hand_values():
    torch.testing.assert_close(emd_per_sample(P, Q, r=1), torch.tensor(EMD1))


def test_emd_per_sample_r2_hand_values():
    torch.testing.assert_close(emd_per_sample(P, Q, r=2), torch.tensor(EMD2))
    torch.testing.assert_close(emd_per_sample(P, Q), torch.tensor(EMD2))  # default r = 2


def test_emd_r3_matches_definition():
    # sample 0: ((0.3^3 + 0.3^3 + 0) / 3)^(1/3) = (0.018)^(1/3)
    torch.testing.assert_close(emd_per_sample(P[:1], Q[:1], r=3), torch.tensor([0.018 ** (1 / 3)]))


def test_emd_symmetric_and_zero_on_identical():
    torch.testing.assert_close(emd_per_sample(P, Q), emd_per_sample(Q, P))
    torch.testing.assert_close(emd_per_sample(P, P), torch.zeros(2))


def test_emd_loss_is_mean_of_per_sample_not_batch_rms():
    # NIMA: (sqrt(0.06) + sqrt(2/3)) / 2 = (0.244949 + 0.816497) / 2 = 0.530723
    expected = (EMD2[0] + EMD2[1]) / 2
    torch.testing.assert_close(emd_loss(P, Q, r=2), torch.tensor(expected))
    # the authors' single RMS over the whole batch: sqrt((0.09+0.09+0+1+1+0) / 6) = 0.602771
    batch_rms = math.sqrt((0.09 + 0.09 + 1 + 1) / 6)
    assert abs(emd_loss(P, Q, r=2).item() - batch_rms) > 0.05
    torch.testing.assert_close(emd_loss(P, Q, r=1), torch.tensor((0.2 + 2 / 3) / 2))


def test_emd_loss_weighted():
    # weights (1, 3): (1 * sqrt(0.06) + 3 * sqrt(2/3)) / 4
    w = torch.tensor([1.0, 3.0])
    expected = (EMD2[0] + 3 * EMD2[1]) / 4
    torch.testing.assert_close(emd_loss(P, Q, r=2, weight=w), torch.tensor(expected))
    # uniform weights == unweighted
    torch.testing.assert_close(emd_loss(P, Q, weight=torch.full((2,), 7.0)), emd_loss(P, Q))


def test_emd_gradient_matches_hand_derivative():
    # sample 1 alone, r = 2: d = CDF_p - CDF_q = [-1, -1, 0], EMD = sqrt(2/3).
    # dEMD/dd_k = d_k / (K * EMD) = [-1, -1, 0] / (3 sqrt(2/3)),
    # dEMD/dp_j = sum_{k >= j} dEMD/dd_k  (CDF_k = sum_{j <= k} p_j)
    #           = [-2, -1, 0] / (3 sqrt(2/3))
    p = P[1:].clone().requires_grad_(True)
    emd_loss(p, Q[1:], r=2).backward()
    expected = torch.tensor([[-2.0, -1.0, 0.0]]) / (3 * math.sqrt(2 / 3))
    torch.testing.assert_close(p.grad, expected)


def test_emd_gradcheck_and_finite_gradient_at_zero_distance():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), dim=1)
    for r in (1, 2):
        assert torch.autograd.gradcheck(
            lambda x, r=r: emd_loss(torch.softmax(x, dim=1), target, r=r), (logits,)
        )
    # identical distributions: the loss is 0 and its (sub)gradient must be finite, not NaN
    p = target.clone().requires_grad_(True)
    loss = emd_loss(p, target, r=2)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(p.grad).all()


def test_emd_shape_and_order_errors():
    with pytest.raises(ValueError, match="shape"):
        emd_per_sample(P, Q[:, :2])
    with pytest.raises(ValueError, match="shape"):
        emd_per_sample(P[0], Q[0])
    with pytest.raises(ValueError, match="r must be"):
        emd_per_sample(P, Q, r=0)


def test_mse_and_l1_hand_values():
    pred = torch.tensor([1.0, 2.0, 4.0])
    target = torch.tensor([2.0, 4.0, 4.0])
    # errors: [-1, -2, 0]; MSE = (1 + 4 + 0) / 3; L1 = (1 + 2 + 0) / 3
    torch.testing.assert_close(mse_loss(pred, target), torch.tensor(5.0 / 3.0))
    torch.testing.assert_close(l1_loss(pred, target), torch.tensor(1.0))


def test_mse_and_l1_weighted():
    pred = torch.tensor([1.0, 2.0, 4.0])
    target = torch.tensor([2.0, 4.0, 4.0])
    w = torch.tensor([2.0, 1.0, 1.0])
    # MSE: (2*1 + 1*4 + 1*0) / 4 = 1.5 ; L1: (2*1 + 1*2 + 0) / 4 = 1.0
    torch.testing.assert_close(mse_loss(pred, target, weight=w), torch.tensor(1.5))
    torch.testing.assert_close(l1_loss(pred, target, weight=w), torch.tensor(1.0))
    # a zero weight removes the sample: (1*4) / 1 on sample 1 only
    w0 = torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(mse_loss(pred, target, weight=w0), torch.tensor(4.0))


def test_mse_and_l1_gradients():
    pred = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    target = torch.tensor([2.0, 4.0, 4.0])
    w = torch.tensor([2.0, 1.0, 1.0])
    mse_loss(pred, target, weight=w).backward()
    # d/dpred_i [sum_j w_j (p_j - t_j)^2 / sum w] = 2 w_i (p_i - t_i) / 4 = [-1, -1, 0]
    torch.testing.assert_close(pred.grad, torch.tensor([-1.0, -1.0, 0.0]))
    pred.grad = None
    l1_loss(pred, target).backward()
    # d/dpred_i mean |p - t| = sign(p_i - t_i) / 3 (torch: sign(0) = 0)
    torch.testing.assert_close(pred.grad, torch.tensor([-1.0, -1.0, 0.0]) / 3)


def test_losses_reduce_trailing_dims_per_sample():
    # (B, 2): per-sample mean of squared errors: [(1 + 0)/2, (4 + 4)/2] = [0.5, 4]; weights (1, 1)
    pred = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    target = torch.zeros(2, 2)
    torch.testing.assert_close(mse_loss(pred, target), torch.tensor(2.25))
    torch.testing.assert_close(
        mse_loss(pred, target, weight=torch.tensor([3.0, 1.0])), torch.tensor((1.5 + 4) / 4)
    )


def test_loss_shape_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        mse_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="shapes differ"):
        l1_loss(torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="one value per sample"):
        mse_loss(torch.zeros(3), torch.zeros(3), weight=torch.ones(2))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        weighted_mean(torch.zeros(2, 2))


def test_mean_score_hand_values():
    levels = torch.tensor([1.0, 2.0, 3.0])
    # [0.2*1 + 0.5*2 + 0.3*3, 0*1 + 0*2 + 1*3] = [2.1, 3.0]
    torch.testing.assert_close(mean_score(P, levels), torch.tensor([2.1, 3.0]))
    with pytest.raises(ValueError, match="levels"):
        mean_score(P, torch.tensor([1.0, 2.0]))


def test_mean_score_with_scale_levels_and_gradient():
    from elta_lightning.scales import PARA_SCALE

    levels = PARA_SCALE.levels_tensor()  # 1.0, 1.5, ..., 5.0 (K = 9)
    dist = torch.zeros(1, 9)
    dist[0, 0] = 0.5  # level 1.0
    dist[0, 8] = 0.5  # level 5.0
    torch.testing.assert_close(mean_score(dist, levels), torch.tensor([3.0]))
    logits = torch.zeros(1, 9, requires_grad=True)
    mean_score(torch.softmax(logits, dim=1), levels).sum().backward()
    # uniform softmax: d mean / d logit_k = p_k (level_k - mean) = (level_k - 3) / 9
    torch.testing.assert_close(logits.grad, ((levels - 3.0) / 9).unsqueeze(0))
