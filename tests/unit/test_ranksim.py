"""Unit tests of RankSim (blackbox ranking, masked batch loss, de-duplication mask)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sync_check import HostSyncRecorder

from elta_lightning.longtail.ranksim import (
    REFERENCE_INTERPOLATION_LAMBDA,
    BlackboxRank,
    blackbox_rank,
    dedup_mask,
    rank_descending,
    rank_normalised,
    ranksim_loss,
)

LAM = REFERENCE_INTERPOLATION_LAMBDA


def _angles(*degrees: float) -> torch.Tensor:
    a = torch.deg2rad(torch.tensor(degrees, dtype=torch.float64))
    return torch.stack([a.cos(), a.sin()], dim=1)


class _RowRanker(torch.autograd.Function):
    """Test-local, one-row ranker in the reference's form (rank one (1, N) row per call)."""

    @staticmethod
    def forward(ctx, row, lam):
        n = row.shape[1]
        rank = (torch.argsort(torch.argsort(row, dim=1, descending=True, stable=True)) + 1) / n
        ctx.save_for_backward(row, rank)
        ctx.lam = lam
        return rank.to(row.dtype)

    @staticmethod
    def backward(ctx, grad):
        row, rank = ctx.saved_tensors
        perturbed = row + ctx.lam * grad
        n = row.shape[1]
        rank_p = (torch.argsort(torch.argsort(perturbed, descending=True, stable=True)) + 1) / n
        return -(rank - rank_p).to(row.dtype) / (ctx.lam + 1e-8), None


def _row_loop_ranksim(features: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """The reference's algorithm on an already de-duplicated batch: a Python loop over rows."""
    f = F.normalize(features, dim=1)
    similarity = f @ f.T
    loss = features.new_zeros(())
    for i in range(len(labels)):
        label_sim = -(labels[i] - labels).abs().unsqueeze(0)
        label_rank = (
            torch.argsort(torch.argsort(label_sim, dim=1, descending=True, stable=True)) + 1
        ) / len(labels)
        feature_rank = _RowRanker.apply(similarity[i].unsqueeze(0), lam)
        loss = loss + F.mse_loss(feature_rank, label_rank.to(features.dtype))
    return loss


# -------------------------------------------------------------------------------------- ranks


def test_ranks_hand_computed_three_by_three():
    # Row 0 [3, 1, 2]: 3 first, 2 second, 1 third -> [0, 2, 1].
    # Row 1 [0, 5, -1]: 5, 0, -1 -> [1, 0, 2].
    # Row 2 [2, 2, 1]: tie between columns 0 and 1, lower index first -> [0, 1, 2].
    s = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0], [2.0, 2.0, 1.0]])
    expected = torch.tensor([[0, 2, 1], [1, 0, 2], [0, 1, 2]])
    assert torch.equal(rank_descending(s), expected)
    torch.testing.assert_close(rank_normalised(s), (expected + 1) / 3.0)
    torch.testing.assert_close(blackbox_rank(s, LAM), (expected + 1) / 3.0)
    # A tensor count (the number of kept columns) normalises instead of N.
    torch.testing.assert_close(rank_normalised(s, torch.tensor(2)), (expected + 1) / 2.0)


def test_minus_inf_entries_rank_last():
    s = torch.tensor([[-math.inf, 0.3, -math.inf, 0.7]])
    assert rank_descending(s).tolist() == [[2, 1, 3, 0]]


def test_blackbox_backward_hand_computed_one_row():
    # s = [0.9, 0.5, 0.1] -> ranks [0, 1, 2], normalised [1/3, 2/3, 1].
    # g = [0.3, -0.3, 0], lambda = 2: s + lambda g = [1.5, -0.1, 0.1] -> ranks [0, 2, 1],
    # normalised [1/3, 1, 2/3]. grad = -(r - r') / lambda = -[0, -1/3, 1/3] / 2 = [0, 1/6, -1/6].
    s = torch.tensor([[0.9, 0.5, 0.1]], requires_grad=True)
    ranks = blackbox_rank(s, 2.0)
    ranks.backward(torch.tensor([[0.3, -0.3, 0.0]]))
    torch.testing.assert_close(s.grad, torch.tensor([[0.0, 1 / 6, -1 / 6]]))


def test_blackbox_backward_all_rows_equal_row_by_row():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 0.5
    blackbox_rank(s, LAM).backward(g)
    rows = []
    for i in range(5):
        row = s.detach()[i : i + 1].clone().requires_grad_()
        _RowRanker.apply(row, LAM).backward(g[i : i + 1])
        rows.append(row.grad)
    torch.testing.assert_close(s.grad, torch.cat(rows))
    assert s.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------- loss


def test_loss_zero_when_similarity_orders_match_labels():
    # Feature angles 0, 10, 30 degrees and labels 0, 1, 3: in every row the cosine order is the
    # label-distance order, so the ranks agree everywhere.
    features = _angles(0.0, 10.0, 30.0).requires_grad_()
    loss = ranksim_loss(features, torch.tensor([0.0, 1.0, 3.0]), LAM)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros(3, 2, dtype=torch.float64))


def test_loss_hand_computed_three_samples():
    # Angles [0, 30, 10] degrees, labels [0, 1, 3].
    # Row 0: cos [1, .866, .985] -> ranks [0, 2, 1]; -|dy| [0, -1, -3] -> [0, 1, 2];
    #        normalised difference [0, 1/3, -1/3] -> mean of squares 2/27.
    # Row 1: cos [.866, 1, .940] -> [2, 0, 1]; -|dy| [-1, 0, -2] -> [1, 0, 2] -> 2/27.
    # Row 2: cos [.985, .940, 1] -> [1, 2, 0]; -|dy| [-3, -2, 0] -> [2, 1, 0] -> 2/27.
    # Sum over rows (not their mean, 2/27): 6/27 = 0.22222222.
    loss = ranksim_loss(_angles(0.0, 30.0, 10.0), torch.tensor([0.0, 1.0, 3.0]), LAM)
    torch.testing.assert_close(loss, torch.tensor(6 / 27, dtype=torch.float64))


def test_loss_and_gradient_equal_reference_row_loop():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.randperm(9, generator=gen).to(torch.float64) * 0.7  # distinct labels
    loss = ranksim_loss(features, labels, LAM)
    (grad,) = torch.autograd.grad(loss, features)
    expected = _row_loop_ranksim(features, labels, LAM)
    (expected_grad,) = torch.autograd.grad(expected, features)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    assert loss > 0 and grad.abs().sum() > 0


def test_masked_loss_equals_subset_loss_forward_and_backward():
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(10, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(
        [1.22, 3.43, 1.27, 7.03, 3.46, 5.52, 7.06, 2.05, 9.15, 5.57], dtype=torch.float64
    )
    bins = torch.floor(labels / 0.1).long()  # pairs share bins: (0, 2), (1, 4), (3, 6), (5, 9)
    keep = dedup_mask(bins, torch.Generator().manual_seed(3))
    assert int(keep.sum()) == 6
    masked = ranksim_loss(features, labels, LAM, keep)
    (masked_grad,) = torch.autograd.grad(masked, features)
    index = torch.arange(10)[keep]  # plain (syncing) indexing is fine in the test
    subset = ranksim_loss(features[index], labels[index], LAM)
    (subset_grad,) = torch.autograd.grad(subset, features)
    torch.testing.assert_close(masked, subset)
    torch.testing.assert_close(masked_grad, subset_grad)
    assert torch.equal(masked_grad[~keep], torch.zeros(4, 5, dtype=torch.float64))
    assert masked > 0 and masked_grad.abs().sum() > 0


def test_all_kept_mask_equals_no_mask():
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    labels = torch.rand(6, generator=gen, dtype=torch.float64) * 10
    keep_all = torch.ones(6, dtype=torch.bool)
    torch.testing.assert_close(
        ranksim_loss(features, labels, LAM, keep_all), ranksim_loss(features, labels, LAM)
    )


def test_nothing_kept_gives_zero_with_finite_gradient():
    features = torch.randn(4, 3, requires_grad=True)
    loss = ranksim_loss(features, torch.rand(4), LAM, torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(features.grad, torch.zeros(4, 3))


def test_low_precision_features_give_float32_loss():
    loss = ranksim_loss(torch.randn(6, 8).bfloat16(), torch.rand(6) * 10, LAM)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="features must have shape"):
        ranksim_loss(torch.randn(4), torch.rand(4), LAM)
    with pytest.raises(ValueError, match="labels must have shape"):
        ranksim_loss(torch.randn(4, 3), torch.rand(5), LAM)
    with pytest.raises(ValueError, match="keep must be"):
        ranksim_loss(torch.randn(4, 3), torch.rand(4), LAM, torch.ones(4))
    with pytest.raises(ValueError, match="interpolation_lambda"):
        ranksim_loss(torch.randn(4, 3), torch.rand(4), 0.0)
    with pytest.raises(ValueError, match="scores must have shape"):
        blackbox_rank(torch.randn(4), LAM)
    with pytest.raises(ValueError, match="bins must have shape"):
        dedup_mask(torch.zeros(2, 2), torch.Generator())


# -------------------------------------------------------------------------------------- dedup


def test_dedup_keeps_exactly_one_per_bin():
    bins = torch.tensor([4, 7, 4, 4, 9, 7, 1, 4])
    for seed in range(20):
        keep = dedup_mask(bins, torch.Generator().manual_seed(seed))
        kept_per_bin = torch.zeros(10, dtype=torch.long).index_add_(0, bins, keep.long())
        assert torch.equal(kept_per_bin[[1, 4, 7, 9]], torch.ones(4, dtype=torch.long))
        assert kept_per_bin.sum() == 4


def test_dedup_distinct_bins_keep_everything():
    keep = dedup_mask(torch.arange(6), torch.Generator().manual_seed(0))
    assert keep.all()


def test_dedup_is_seeded_and_uniform():
    bins = torch.tensor([2, 2, 2, 2, 5])
    first = dedup_mask(bins, torch.Generator().manual_seed(7))
    assert torch.equal(first, dedup_mask(bins, torch.Generator().manual_seed(7)))
    # Successive draws of one generator pick each of the four tied samples about 1/4 of the time.
    gen = torch.Generator().manual_seed(8)
    picks = torch.stack([dedup_mask(bins, gen) for _ in range(4000)]).double().mean(0)
    assert picks[4] == 1.0
    assert torch.all((picks[:4] > 0.22) & (picks[:4] < 0.28))


# ------------------------------------------------------------------------------------ no sync


def test_no_host_sync_forward_and_backward():
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(16, 8, generator=gen, requires_grad=True)
    labels = torch.rand(16, generator=gen) * 10
    bins = torch.clamp(torch.floor(labels / 0.1), 0, 99).long()
    with HostSyncRecorder() as rec:
        keep = dedup_mask(bins // 10, gen)  # coarse bins, so that some samples are excluded
        loss = ranksim_loss(features, labels, LAM, keep) + ranksim_loss(features, labels, LAM)
        loss.backward()
    assert rec.syncs == []
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_blackbox_function_no_host_sync_with_tensor_count():
    s = torch.randn(4, 6, requires_grad=True)
    with HostSyncRecorder() as rec:
        ranks = BlackboxRank.apply(s, LAM, torch.tensor(6))
        (ranks * torch.arange(6.0)).sum().backward()
    assert rec.syncs == []
    assert torch.isfinite(s.grad).all()
