"""Unit tests of the FDS (feature distribution smoothing) tensor functions."""

from __future__ import annotations

import doctest
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from sync_check import HostSyncRecorder

from elta_lightning.longtail.fds import (
    accumulate_bin_sums,
    calibrate,
    ema_update,
    fds_kernel,
    moments_from_sums,
    smooth_over_bins,
)
from elta_lightning.longtail.reweighting import lds_kernel

# --- kernel and smoothing -------------------------------------------------------------------------


def test_fds_kernel_matches_reference_numbers():
    # Reference FDS gaussian ks=5, sigma=2: [0.186, 0.205, 0.217, 0.205, 0.186] (sums to 1).
    kernel = fds_kernel("gaussian", 5, 2.0)
    assert kernel.dtype == torch.float64
    torch.testing.assert_close(
        kernel,
        torch.tensor([0.186, 0.205, 0.217, 0.205, 0.186], dtype=torch.float64),
        atol=5e-4,
        rtol=0,
    )
    # triang(3) = [1/2, 1, 1/2] -> [1/4, 1/2, 1/4].
    torch.testing.assert_close(
        fds_kernel("triang", 3, 1.0), torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    )


@pytest.mark.parametrize("kind", ["gaussian", "triang", "laplace"])
def test_fds_kernel_is_lds_kernel_over_its_sum(kind):
    window = torch.from_numpy(lds_kernel(kind, 9, 1.0))
    kernel = fds_kernel(kind, 9, 1.0)
    torch.testing.assert_close(kernel.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(kernel, window / window.sum())


def test_reflect_padding_by_hand_on_three_bins():
    # Kernel [1/4, 1/2, 1/4]; reflect padding mirrors about the end bins: x[-1] = x[1], x[3] = x[1].
    # Column 0 = [0, 3, 6] -> padded [3, 0, 3, 6, 3]:
    #   b0 = 3/4 + 0 + 3/4 = 1.5, b1 = 0 + 3/2 + 6/4 = 3, b2 = 3/4 + 3 + 3/4 = 4.5.
    # Column 1 = [10, 20, 60] -> padded [20, 10, 20, 60, 20]:
    #   b0 = 5 + 5 + 5 = 15, b1 = 2.5 + 10 + 15 = 27.5, b2 = 5 + 30 + 5 = 40.
    stats = torch.tensor([[0.0, 10.0], [3.0, 20.0], [6.0, 60.0]])
    smoothed = smooth_over_bins(stats, torch.tensor([0.25, 0.5, 0.25]))
    torch.testing.assert_close(smoothed, torch.tensor([[1.5, 15.0], [3.0, 27.5], [4.5, 40.0]]))


def test_asymmetric_kernel_is_a_cross_correlation():
    # out[b] = sum_j k[j] x[reflect(b + j - 1)]; k = [1, 0, 0] picks x[reflect(b - 1)]:
    # [x1, x0, x1] = [3, 0, 3] for x = [0, 3, 6] (as the reference's F.conv1d).
    smoothed = smooth_over_bins(torch.tensor([[0.0], [3.0], [6.0]]), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(smoothed, torch.tensor([[3.0], [0.0], [3.0]]))


def test_matches_reference_pad_and_conv1d():
    gen = torch.Generator().manual_seed(0)
    stats = torch.randn(12, 6, generator=gen)
    kernel = fds_kernel("gaussian", 5, 2.0).float()
    # The reference: F.pad(reflect) + F.conv1d on (D, 1, num_bins).
    reference = (
        F.conv1d(
            F.pad(stats.unsqueeze(1).permute(2, 1, 0), pad=(2, 2), mode="reflect"),
            weight=kernel.view(1, 1, -1),
        )
        .permute(2, 1, 0)
        .squeeze(1)
    )
    smoothed = smooth_over_bins(stats, kernel)
    torch.testing.assert_close(smoothed, reference)
    assert smoothed.dtype == torch.float32 and smoothed.is_contiguous()


@pytest.mark.parametrize("num_bins", [1, 2, 3, 7, 100])
def test_smoothing_a_constant_gives_the_constant(num_bins):
    stats = torch.full((num_bins, 3), 2.5, dtype=torch.float64)
    stats[:, 1] = -4.0
    for kernel in (fds_kernel("gaussian", 5, 2.0), fds_kernel("laplace", 9, 1.0)):
        torch.testing.assert_close(smooth_over_bins(stats, kernel), stats)


def test_fewer_bins_than_the_kernel_half_width():
    # 2 bins, 5-tap kernel triang(5) / 3 = [1, 2, 3, 2, 1] / 9 (pad 2 >= 2 bins, where
    # F.pad(reflect) raises): repeated reflection gives b0's window [x0, x1, x0, x1, x0] and b1's
    # [x1, x0, x1, x0, x1]. With x = [0, 9]: b0 = 9 * (2 + 2) / 9 = 4, b1 = 9 * (1 + 3 + 1) / 9 = 5.
    kernel = fds_kernel("triang", 5, 1.0)
    stats = torch.tensor([[0.0], [9.0]], dtype=torch.float64)
    torch.testing.assert_close(
        smooth_over_bins(stats, kernel), torch.tensor([[4.0], [5.0]], dtype=torch.float64)
    )
    # A single bin is multiplied by sum(kernel) = 1.
    single = torch.tensor([[1.5, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(smooth_over_bins(single, kernel), single)


def test_smoothing_bad_shapes_raise():
    with pytest.raises(ValueError, match="stats must have shape"):
        smooth_over_bins(torch.ones(5), torch.ones(3))
    with pytest.raises(ValueError, match="stats must have shape"):
        smooth_over_bins(torch.ones(0, 3), torch.ones(3))
    with pytest.raises(ValueError, match="odd length"):
        smooth_over_bins(torch.ones(5, 2), torch.ones(4))


# --- sums, moments, EMA ---------------------------------------------------------------------------

FEATURES = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, -1.0]])
BINS = torch.tensor([0, 0, 1])


def test_accumulate_bin_sums_two_bin_toy_by_hand():
    # Bin 0: rows (1, 2), (3, 6) -> count 2, sum (4, 8), sum_sq (1 + 9, 4 + 36) = (10, 40).
    # Bin 1: row (5, -1) -> count 1, sum (5, -1), sum_sq (25, 1). Bin 2: empty.
    features = FEATURES.clone().requires_grad_(True)
    count, total, total_sq = accumulate_bin_sums(features, BINS, num_bins=3)
    assert all(t.dtype == torch.float64 and not t.requires_grad for t in (count, total, total_sq))
    torch.testing.assert_close(count, torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(
        total, torch.tensor([[4.0, 8.0], [5.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        total_sq, torch.tensor([[10.0, 40.0], [25.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    )


def test_accumulate_bin_sums_has_no_host_sync_and_adds_over_chunks():
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(40, 5, generator=gen)
    bins = torch.randint(0, 7, (40,), generator=gen)
    with HostSyncRecorder() as rec:
        whole = accumulate_bin_sums(features, bins, 7)
    assert rec.syncs == []
    # Summing the sums of two halves (what the all-reduce over ranks does) gives the same.
    first = accumulate_bin_sums(features[:17], bins[:17], 7)
    second = accumulate_bin_sums(features[17:], bins[17:], 7)
    for a, b, c in zip(first, second, whole):
        torch.testing.assert_close(a + b, c)


def test_moments_from_sums_by_hand():
    # Bin 0: values (1, 3) and (2, 6): mean (2, 4); unbiased var ((10 - 2*4) / 1, (40 - 2*16) / 1)
    # = (2, 8). Bin 1: one sample -> biased var 25 - 25 = 0, 1 - 1 = 0. Bin 2: absent -> 0 / 1.
    mean, var, present = moments_from_sums(*accumulate_bin_sums(FEATURES, BINS, num_bins=3))
    f64 = torch.float64
    torch.testing.assert_close(mean, torch.tensor([[2.0, 4.0], [5.0, -1.0], [0.0, 0.0]], dtype=f64))
    torch.testing.assert_close(var, torch.tensor([[2.0, 8.0], [0.0, 0.0], [1.0, 1.0]], dtype=f64))
    assert present.tolist() == [True, True, False]


def test_moments_match_torch_mean_and_var():
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(60, 4, generator=gen, dtype=torch.float64) * 3 + 1
    bins = torch.randint(0, 6, (60,), generator=gen)
    bins[0] = 6  # a bin with a single sample
    mean, var, present = moments_from_sums(*accumulate_bin_sums(features, bins, num_bins=8))
    for b in range(8):
        rows = features[bins == b]
        assert bool(present[b]) == (len(rows) > 0)
        if len(rows) == 0:
            continue
        torch.testing.assert_close(mean[b], rows.mean(0))
        torch.testing.assert_close(var[b], rows.var(0, unbiased=len(rows) != 1))


def test_moments_bad_shapes_raise():
    with pytest.raises(ValueError, match="count must have shape"):
        moments_from_sums(torch.ones(2, 1), torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="sum and sum_sq"):
        moments_from_sums(torch.ones(2), torch.ones(3, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="sum and sum_sq"):
        moments_from_sums(torch.ones(2), torch.ones(2, 3), torch.ones(2, 4))


def test_ema_first_update_takes_the_current_statistics():
    # first=True: factor 0 -> present bins become the current statistics; bin 1 (absent) keeps its
    # running values (10, 5).
    running_mean = torch.full((3, 2), 10.0)
    running_var = torch.full((3, 2), 5.0)
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]])
    var = torch.tensor([[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]])
    present = torch.tensor([True, False, True])
    new_mean, new_var = ema_update(running_mean, running_var, mean, var, present, 0.9, first=True)
    torch.testing.assert_close(new_mean, torch.tensor([[1.0, 2.0], [10.0, 10.0], [3.0, 4.0]]))
    torch.testing.assert_close(new_var, torch.tensor([[0.5, 0.5], [5.0, 5.0], [2.0, 2.0]]))


def test_ema_later_update_by_hand_and_out_of_place():
    # m = 0.9: mean 0.1 * 1 + 0.9 * 10 = 9.1, 0.1 * 2 + 0.9 * 10 = 9.2; var 0.1 * 0.5 + 0.9 * 5 =
    # 4.55; bin 1 absent: unchanged. Inputs are not modified and the results are new tensors.
    running_mean = torch.full((2, 2), 10.0)
    running_var = torch.full((2, 2), 5.0)
    mean = torch.tensor([[1.0, 2.0], [7.0, 7.0]])
    var = torch.full((2, 2), 0.5, dtype=torch.float64)  # float64 sums, float32 buffers
    present = torch.tensor([True, False])
    new_mean, new_var = ema_update(running_mean, running_var, mean, var, present, 0.9, first=False)
    torch.testing.assert_close(new_mean, torch.tensor([[9.1, 9.2], [10.0, 10.0]]))
    torch.testing.assert_close(new_var, torch.tensor([[4.55, 4.55], [5.0, 5.0]]))
    assert new_mean.dtype == torch.float32 and new_var.dtype == torch.float32
    assert torch.equal(running_mean, torch.full((2, 2), 10.0))
    assert new_mean.data_ptr() != running_mean.data_ptr()


def test_ema_has_no_host_sync_and_rejects_bad_inputs():
    ones = torch.ones(4, 3)
    with HostSyncRecorder() as rec:
        ema_update(ones, ones, ones * 2, ones * 3, torch.tensor([1, 0, 1, 0]) > 0, 0.9, False)
    assert rec.syncs == []
    with pytest.raises(ValueError, match="momentum"):
        ema_update(ones, ones, ones, ones, torch.ones(4, dtype=torch.bool), 1.5, False)
    with pytest.raises(ValueError, match="present must have shape"):
        ema_update(ones, ones, ones, ones, torch.ones(3, dtype=torch.bool), 0.9, False)
    with pytest.raises(ValueError, match="var must have shape"):
        ema_update(ones, ones, ones, torch.ones(4, 2), torch.ones(4, dtype=torch.bool), 0.9, False)


# --- calibrate ------------------------------------------------------------------------------------

# Bin 0: var (1, 4), smoothed var (4, 1) -> ratio (4, 1/4), sqrt (2, 1/2); mean (1, 2),
#        smoothed mean (0, 10).
# Bin 1: var (0, 2), smoothed var (5, 2) -> dim 0 unchanged (var 0), dim 1 ratio 1 -> shift only:
#        z - 3 + 4 = z + 1 (mean (9, 3), smoothed mean (9, 4)).
# Bin 2: var (1e-11, 0): total < 1e-10 -> the whole row unchanged (although dim 0 var != 0).
# Bin 3: var (1, 1), smoothed var (100, 0.001) -> clamp to (10, 0.1); mean 0, smoothed mean 0.
MEAN = torch.tensor([[1.0, 2.0], [9.0, 3.0], [5.0, 5.0], [0.0, 0.0]])
VAR = torch.tensor([[1.0, 4.0], [0.0, 2.0], [1e-11, 0.0], [1.0, 1.0]])
SMOOTHED_MEAN = torch.tensor([[0.0, 10.0], [9.0, 4.0], [7.0, 7.0], [0.0, 0.0]])
SMOOTHED_VAR = torch.tensor([[4.0, 1.0], [5.0, 2.0], [9.0, 9.0], [100.0, 0.001]])
CAL_FEATURES = torch.tensor([[3.0, 6.0], [2.0, 5.0], [1.0, 1.0], [1.0, 2.0], [3.0, 6.0]])
CAL_BINS = torch.tensor([0, 1, 2, 3, 3])
# Row 0 (bin 0): ((3 - 1) * 2 + 0, (6 - 2) * 0.5 + 10) = (4, 12).
# Row 1 (bin 1): (2 unchanged, 5 + 1 = 6).
# Row 2 (bin 2): unchanged (1, 1).
# Rows 3, 4 (bin 3): (z0 * sqrt(10), z1 * sqrt(0.1)).
CAL_EXPECTED = torch.tensor(
    [
        [4.0, 12.0],
        [2.0, 6.0],
        [1.0, 1.0],
        [math.sqrt(10), 2 * math.sqrt(0.1)],
        [3 * math.sqrt(10), 6 * math.sqrt(0.1)],
    ]
)


def _calibrate(features: torch.Tensor, bins: torch.Tensor = CAL_BINS) -> torch.Tensor:
    return calibrate(features, bins, MEAN, VAR, SMOOTHED_MEAN, SMOOTHED_VAR)


def test_calibrate_by_hand():
    torch.testing.assert_close(_calibrate(CAL_FEATURES), CAL_EXPECTED)


def test_calibrate_is_per_sample_whatever_the_order():
    order = torch.tensor([4, 2, 0, 3, 1])
    out = _calibrate(CAL_FEATURES[order], CAL_BINS[order])
    torch.testing.assert_close(out, CAL_EXPECTED[order])


def test_calibrate_gradient_flows_to_features_only_through_the_scale():
    # d z' / d z = sqrt(clamped ratio) where calibrated, 1 where unchanged.
    features = CAL_FEATURES.clone().requires_grad_(True)
    _calibrate(features).sum().backward()
    r10, r01 = math.sqrt(10), math.sqrt(0.1)
    expected = torch.tensor([[2.0, 0.5], [1.0, 1.0], [1.0, 1.0], [r10, r01], [r10, r01]])
    torch.testing.assert_close(features.grad, expected)


def test_calibrate_is_out_of_place_and_autograd_safe():
    # sigmoid's backward needs its output: the reference's in-place masked write into the
    # features raised "modified by an inplace operation" here (issue #6).
    x = torch.randn(5, 2, requires_grad=True)
    features = torch.sigmoid(x)
    before = features.detach().clone()
    out = _calibrate(features)
    (out**2).sum().backward()
    assert torch.equal(features.detach(), before)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_calibrate_gradcheck_float64():
    features = CAL_FEATURES.to(torch.float64).requires_grad_(True)
    stats = [t.to(torch.float64) for t in (MEAN, VAR, SMOOTHED_MEAN, SMOOTHED_VAR)]
    assert torch.autograd.gradcheck(lambda f: calibrate(f, CAL_BINS, *stats), (features,))


def test_calibrate_has_no_host_sync():
    features = CAL_FEATURES.clone().requires_grad_(True)
    with HostSyncRecorder() as rec:
        out = _calibrate(features)
        out.sum().backward()
    assert rec.syncs == []


def test_calibrate_dtypes():
    # bfloat16 features come back bfloat16; float64 statistics do not widen float32 features.
    out = _calibrate(CAL_FEATURES.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), CAL_EXPECTED, atol=0.05, rtol=0.02)
    stats64 = [t.to(torch.float64) for t in (MEAN, VAR, SMOOTHED_MEAN, SMOOTHED_VAR)]
    out32 = calibrate(CAL_FEATURES, CAL_BINS, *stats64)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, CAL_EXPECTED)


def test_calibrate_with_identity_statistics_is_the_identity():
    # The reference's initial buffers (mean 0, var 1 everywhere, smoothed alike): z' = z.
    features = torch.randn(6, 3)
    zeros, ones = torch.zeros(4, 3), torch.ones(4, 3)
    out = calibrate(features, torch.tensor([0, 1, 2, 3, 0, 1]), zeros, ones, zeros, ones)
    torch.testing.assert_close(out, features)


def test_calibrate_bad_inputs_raise():
    with pytest.raises(ValueError, match="features must have shape"):
        _calibrate(torch.ones(5))
    with pytest.raises(ValueError, match="bins must have shape"):
        _calibrate(CAL_FEATURES, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        _calibrate(CAL_FEATURES, CAL_BINS.float())
    with pytest.raises(ValueError, match="smoothed_var must have shape"):
        calibrate(CAL_FEATURES, CAL_BINS, MEAN, VAR, SMOOTHED_MEAN, torch.ones(4, 3))
    with pytest.raises(ValueError, match="mean must have shape"):
        calibrate(torch.ones(5, 3), CAL_BINS, MEAN, VAR, SMOOTHED_MEAN, SMOOTHED_VAR)
    with pytest.raises(ValueError, match="clip"):
        calibrate(CAL_FEATURES, CAL_BINS, MEAN, VAR, SMOOTHED_MEAN, SMOOTHED_VAR, clip=(0, 10))


def test_accumulate_bad_inputs_raise():
    with pytest.raises(ValueError, match="features must have shape"):
        accumulate_bin_sums(torch.ones(3), BINS, 2)
    with pytest.raises(ValueError, match="bins must have shape"):
        accumulate_bin_sums(FEATURES, torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match="integer"):
        accumulate_bin_sums(FEATURES, BINS.float(), 2)
    with pytest.raises(ValueError, match="num_bins"):
        accumulate_bin_sums(FEATURES, BINS, 0)


def test_docstring_examples_run():
    module = importlib.import_module("elta_lightning.longtail.fds")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
