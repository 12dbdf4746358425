"""Unit tests of elta_lightning.losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from elta_lightning.losses import (
    EMD_FORMS,
    emd_batch_rms,
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


# ----- the ELTA code's batch-RMS EMD (loss.emd=batch_rms) ----------------------------------
def authors_emd(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """ELTA 1.0's loss, as written in their code: one RMS over the (B, K) batch."""
    return torch.sqrt(torch.mean((torch.cumsum(p, dim=1) - torch.cumsum(q, dim=1)) ** 2))


def test_emd_batch_rms_hand_value_and_authors_formula():
    # sqrt((0.09 + 0.09 + 0 + 1 + 1 + 0) / 6) = sqrt(2.18 / 6) = 0.602771
    expected = math.sqrt(2.18 / 6)
    torch.testing.assert_close(emd_batch_rms(P, Q, r=2), torch.tensor(expected))
    torch.testing.assert_close(emd_batch_rms(P, Q), authors_emd(P, Q))
    # = sqrt(mean_i EMD_2(i)^2), and above the mean of per-sample EMDs (Jensen) unless equal
    torch.testing.assert_close(
        emd_batch_rms(P, Q), torch.tensor(math.sqrt((EMD2[0] ** 2 + EMD2[1] ** 2) / 2))
    )
    assert emd_batch_rms(P, Q).item() > emd_loss(P, Q).item() + 0.05
    # one sample: both forms are the same number
    torch.testing.assert_close(emd_batch_rms(P[:1], Q[:1]), emd_loss(P[:1], Q[:1]))
    assert EMD_FORMS == ("per_sample", "batch_rms")


def test_emd_batch_rms_random_batches_match_authors_code():
    gen = torch.Generator().manual_seed(3)
    for batch in (2, 5, 32):
        p = torch.softmax(torch.randn(batch, 10, generator=gen), dim=1)
        q = torch.softmax(torch.randn(batch, 10, generator=gen), dim=1)
        torch.testing.assert_close(emd_batch_rms(p, q), authors_emd(p, q))


def test_emd_batch_rms_other_orders():
    # r = 1: the mean over samples and bins of |d| = (0.3 + 0.3 + 1 + 1) / 6
    torch.testing.assert_close(emd_batch_rms(P, Q, r=1), torch.tensor(2.6 / 6))
    torch.testing.assert_close(emd_batch_rms(P, Q, r=1), emd_loss(P, Q, r=1))
    # r = 3: (mean of |d|^3)^(1/3) = ((0.027 * 2 + 2) / 6)^(1/3)
    torch.testing.assert_close(emd_batch_rms(P, Q, r=3), torch.tensor((2.054 / 6) ** (1 / 3)))


def test_emd_batch_rms_weighted():
    # weights (1, 3): sqrt((1 * 0.06 + 3 * 2/3) / 4); uniform weights == unweighted
    w = torch.tensor([1.0, 3.0])
    expected = math.sqrt((0.06 + 3 * (2 / 3)) / 4)
    torch.testing.assert_close(emd_batch_rms(P, Q, weight=w), torch.tensor(expected))
    torch.testing.assert_close(
        emd_batch_rms(P, Q, weight=torch.full((2,), 5.0)), emd_batch_rms(P, Q)
    )
    # weight 0 drops a sample
    torch.testing.assert_close(
        emd_batch_rms(P, Q, weight=torch.tensor([0.0, 2.0])), torch.tensor(EMD2[1])
    )
    with pytest.raises(ValueError, match="one value per sample"):
        emd_batch_rms(P, Q, weight=torch.ones(3))


def test_emd_batch_rms_gradient_weights_samples_by_their_distance():
    # d L / d EMD_i = EMD_i / (B L) for L = sqrt(mean_i EMD_i^2); the per-sample mean gives 1/B
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    target = torch.softmax(torch.randn(4, 10, generator=gen, dtype=torch.float64), dim=1)
    per = emd_per_sample(torch.softmax(logits, dim=1), target).detach()
    x = logits.clone().requires_grad_(True)
    emd_batch_rms(torch.softmax(x, dim=1), target).backward()
    expected = torch.zeros_like(logits)
    for i in range(4):
        xi = logits.clone().requires_grad_(True)
        emd_per_sample(torch.softmax(xi, dim=1), target)[i].backward()
        expected += xi.grad * per[i] / (4 * torch.sqrt((per**2).mean()))
    torch.testing.assert_close(x.grad, expected)


def test_emd_batch_rms_gradcheck_and_finite_gradient_at_zero_distance():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(4, 5, generator=gen, dtype=torch.float64), dim=1)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: emd_batch_rms(torch.softmax(x, dim=1), target, weight=weight), (logits,)
    )
    p = target.clone().requires_grad_(True)
    loss = emd_batch_rms(p, target)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(p.grad).all()
    # one sample at zero distance, the other not: still finite
    q = torch.stack([target[0], target[1]])
    p = torch.stack([target[0], target[2]]).requires_grad_(True)
    emd_batch_rms(p, q).backward()
    assert torch.isfinite(p.grad).all()


def test_module_task_loss_follows_loss_emd():
    from omegaconf import OmegaConf

    from elta_lightning.config import load_config
    from elta_lightning.label_stats import LabelStats
    from elta_lightning.models.module import IAAModule, scale_hparams
    from elta_lightning.parts import TrainStep
    from elta_lightning.scales import AVA_SCALE

    gen = torch.Generator().manual_seed(2)
    output = torch.randn(6, 10, generator=gen)
    target = torch.softmax(torch.randn(6, 10, generator=gen), dim=1)
    weights = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0, 3.0])
    step = TrainStep(
        images=torch.zeros(6, 3, 8, 8),
        features=None,
        targets=target,
        scores=target @ torch.arange(1.0, 11.0),
        weights=weights,
    )
    stats = LabelStats.from_scores(step.scores, AVA_SCALE.to_common).hparams()
    losses = {}
    for form in ("per_sample", "batch_rms", None):
        overrides = ["dataset=synthetic", "method=vanilla", "model.backbone=test_convnext"]
        cfg = OmegaConf.to_container(
            load_config([*overrides, *([f"loss.emd={form}"] if form else [])]), resolve=True
        )
        if form is None:
            del cfg["loss"]  # a checkpoint written before the option: per_sample
        module = IAAModule(cfg, scale_hparams(AVA_SCALE), stats, load_pretrained=False)
        assert module.head_kind == "distribution"
        losses[form] = module.task_loss(output, step)
    probs = output.softmax(dim=1)
    torch.testing.assert_close(losses["per_sample"], emd_loss(probs, target, weight=weights))
    torch.testing.assert_close(losses["batch_rms"], emd_batch_rms(probs, target, weight=weights))
    torch.testing.assert_close(losses[None], losses["per_sample"])
    assert load_config(["method=vanilla"]).loss.emd == "per_sample"  # the default


def test_config_rejects_unknown_emd_form():
    from elta_lightning.config import load_config
    from elta_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="loss.emd"):
        load_config(["method=vanilla", "loss.emd=rms"])


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
