"""Unit tests of INV / SQINV re-weighting with LDS: per-bin weight tables, per-step gather."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve1d, gaussian_filter1d
from sync_check import HostSyncRecorder

from elta_lightning.longtail.reweighting import bin_weights, lds_kernel, sample_weights


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64))


# --- lds_kernel -----------------------------------------------------------------------------------


def test_gaussian_kernel_matches_reference_numbers():
    # Reference numbers (scipy 1.17.1). ks=5, sigma=2 is almost flat: the reflected tails of
    # gaussian_filter1d on a 5-sample impulse fold back (the fidelity trap).
    np.testing.assert_allclose(
        lds_kernel("gaussian", 5, 2.0), [0.858, 0.946, 1.0, 0.946, 0.858], atol=5e-4
    )
    np.testing.assert_allclose(
        lds_kernel("gaussian", 9, 1.0),
        [0.0003, 0.0111, 0.1353, 0.6065, 1.0, 0.6065, 0.1353, 0.0111, 0.0003],
        atol=5e-5,
    )


def test_gaussian_kernel_is_not_the_analytic_gaussian():
    # exp(-d^2 / 8) for d = -2..2 would be [0.607, 0.882, 1, 0.882, 0.607].
    analytic = np.exp(-(np.arange(-2, 3) ** 2) / 8.0)
    assert np.abs(lds_kernel("gaussian", 5, 2.0) - analytic).max() > 0.2


def test_gaussian_kernel_is_the_scipy_call_exactly():
    impulse = [0.0] * 4 + [1.0] + [0.0] * 4
    expected = gaussian_filter1d(impulse, sigma=1.5)
    np.testing.assert_array_equal(lds_kernel("gaussian", 9, 1.5), expected / expected.max())


def test_triang_and_laplace_kernels():
    # triang(5) = [1/3, 2/3, 1, 2/3, 1/3]; triang(3) = [1/2, 1, 1/2].
    np.testing.assert_allclose(lds_kernel("triang", 5, 1.0), [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    np.testing.assert_allclose(lds_kernel("triang", 3, 7.0), [0.5, 1.0, 0.5])
    # exp(-|x| / sigma) / (2 sigma) over its max = exp(-|x| / sigma): sigma 1 -> e^-2, e^-1, 1.
    e = np.e
    np.testing.assert_allclose(lds_kernel("laplace", 5, 1.0), [e**-2, e**-1, 1, e**-1, e**-2])
    np.testing.assert_allclose(lds_kernel("laplace", 3, 2.0), [e**-0.5, 1, e**-0.5])


@pytest.mark.parametrize("kind", ["gaussian", "triang", "laplace"])
def test_kernel_peak_one_symmetric_float64(kind):
    window = lds_kernel(kind, 7, 1.3)
    assert window.dtype == np.float64 and window.shape == (7,)
    assert window[3] == 1.0 and window.max() == 1.0
    np.testing.assert_allclose(window, window[::-1])
    np.testing.assert_array_equal(lds_kernel(kind, 1, 2.0), [1.0])


def test_bad_kernel_arguments_raise():
    with pytest.raises(ValueError, match="kernel kind"):
        lds_kernel("box", 5, 1.0)  # type: ignore[arg-type]
    for size in (0, -3, 4, 2.0, True):
        with pytest.raises(ValueError, match="kernel size"):
            lds_kernel("gaussian", size, 1.0)  # type: ignore[arg-type]
    for sigma in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sigma"):
            lds_kernel("laplace", 5, sigma)


# --- bin_weights ----------------------------------------------------------------------------------


def test_sqinv_without_lds_by_hand():
    # counts [4, 0, 1, 9], N = 14: v = sqrt = [2, 0, 1, 3], 1/v = [1/2, inf, 1, 1/3].
    # sum_b n_b / v_b = 2 + 1 + 3 = 6 -> scale 14/6 = 7/3: weights [7/6, -, 7/3, 7/9].
    # Empty bin 1 (v = 0): the largest training-bin weight, 7/3.
    weights = bin_weights([4, 0, 1, 9], "sqinv")
    assert weights.dtype == torch.float64 and weights.shape == (4,)
    _close(weights, [7 / 6, 7 / 3, 7 / 3, 7 / 9])


def test_inv_with_default_clip_by_hand():
    # clip(n, 5, 1000) = [5, 5, 5, 9]; 1/v = [1/5, 1/5, 1/5, 1/9]; sum n/v = 4/5 + 1/5 + 1 = 2;
    # scale 14/2 = 7: [7/5, 7/5, 7/5, 7/9]. The empty bin's own 1/5 equals the cap 1/5.
    _close(bin_weights([4, 0, 1, 9], "inv"), [1.4, 1.4, 1.4, 7 / 9])


def test_inv_with_custom_clip_and_without_clip_by_hand():
    # clip (2, 5): v = [4, 2, 2, 5]; 1/v = [1/4, 1/2, 1/2, 1/5]; sum n/v = 1 + 1/2 + 9/5 = 3.3;
    # scale 14/3.3: [1.0606, 2.1212, 2.1212, 0.8485] (empty bin: min(1/2, cap 1/2)).
    s = 14 / 3.3
    _close(bin_weights([4, 0, 1, 9], "inv", clip=(2, 5)), [s / 4, s / 2, s / 2, s / 5])
    # No clip: v = n; 1/v = [1/4, inf, 1, 1/9]; sum n/v = 3; scale 14/3; empty bin -> cap 1.
    _close(bin_weights([4, 0, 1, 9], "inv", clip=None), [7 / 6, 14 / 3, 14 / 3, 14 / 27])
    _close(bin_weights([4, 0, 1, 9], "inv", clip=(None, None)), [7 / 6, 14 / 3, 14 / 3, 14 / 27])


def test_inv_with_one_sided_clip_by_hand():
    # Lower bound only, 2: v = [4, 2, 2, 9]; 1/v = [1/4, 1/2, 1/2, 1/9]; sum n/v = 1 + 1/2 + 1 =
    # 2.5; scale 14/2.5 = 5.6: [1.4, 2.8, 2.8, 5.6/9].
    _close(bin_weights([4, 0, 1, 9], "inv", clip=(2, None)), [1.4, 2.8, 2.8, 5.6 / 9])
    # Upper bound only, 5: v = [4, 0, 1, 5]; 1/v = [1/4, inf, 1, 1/5]; sum n/v = 1 + 1 + 9/5 =
    # 3.8; scale 14/3.8; the empty bin gets the cap 1 (bin 2).
    s = 14 / 3.8
    _close(bin_weights([4, 0, 1, 9], "inv", clip=(None, 5)), [s / 4, s, s, s / 5])


def test_sqinv_with_triang_lds_by_hand():
    # v = sqrt([4, 0, 1, 9]) = [2, 0, 1, 3]; kernel triang(3) = [1/2, 1, 1/2], zero padding:
    # v~ = [2 + 0/2, 2/2 + 0 + 1/2, 0/2 + 1 + 3/2, 1/2 + 3] = [2, 1.5, 2.5, 3.5].
    # 1/v~ = [1/2, 2/3, 2/5, 2/7]; training bins 0, 2, 3: sum n/v~ = 2 + 2/5 + 18/7 = 174/35;
    # scale 14 * 35 / 174 = 245/87: bin 0 -> 245/174, bin 2 -> 98/87, bin 3 -> 70/87.
    # Empty bin 1: its own 2/3 exceeds the largest training weight 1/2 -> capped: 245/174.
    weights = bin_weights([4, 0, 1, 9], "sqinv", lds=lds_kernel("triang", 3, 1.0))
    _close(weights, [245 / 174, 245 / 174, 98 / 87, 70 / 87])


def test_empty_bin_below_the_cap_keeps_its_smoothed_weight():
    # sqrt([1, 0, 16]) = [1, 0, 4]; triang(3): v~ = [1, 1/2 + 2, 4] = [1, 2.5, 4];
    # 1/v~ = [1, 0.4, 0.25]; sum over training bins 1 + 16/4 = 5, N = 17 -> scale 3.4:
    # [3.4, 1.36, 0.85]; the empty bin's 0.4 is below the cap 1, so it stays.
    _close(bin_weights([1, 0, 16], "sqinv", lds=[0.5, 1.0, 0.5]), [3.4, 1.36, 0.85])


def test_empty_bins_out_of_kernel_reach_get_the_largest_training_weight():
    # sqrt([9, 0, 0, 0, 0, 4]) = [3, 0, 0, 0, 0, 2]; triang(3): v~ = [3, 1.5, 0, 0, 1, 2].
    # Bins 2, 3 have v~ = 0 -> the largest training weight (bin 5: 1/2); bin 1 (1/1.5) and
    # bin 4 (1/1) are above it and capped too. Scale: N = 13, sum n/v~ = 3 + 2 = 5 -> 13/5.
    weights = bin_weights([9, 0, 0, 0, 0, 4], "sqinv", lds=lds_kernel("triang", 3, 1.0))
    s = 13 / 5
    _close(weights, [s / 3, s / 2, s / 2, s / 2, s / 2, s / 2])


@pytest.mark.parametrize("kind", ["inv", "sqinv"])
@pytest.mark.parametrize("kernel", [None, ("gaussian", 5, 2.0), ("laplace", 9, 1.0)])
def test_mean_weight_over_training_samples_is_one(kind, kernel):
    gen = np.random.default_rng(0)
    counts = gen.integers(0, 50, size=100).astype(float)
    counts[:10] = 0  # an empty tail
    counts[40:43] = 0  # and an empty run inside
    lds = None if kernel is None else lds_kernel(*kernel)
    weights = bin_weights(counts, kind, lds=lds).numpy()
    assert np.isfinite(weights).all() and (weights > 0).all()
    np.testing.assert_allclose(np.sum(counts * weights), counts.sum())
    # Empty bins never outweigh the rarest training bin.
    assert weights[counts == 0].max() <= weights[counts > 0].max() * (1 + 1e-12)


@pytest.mark.parametrize("kind", ["inv", "sqinv"])
def test_matches_the_reference_per_sample_procedure(kind):
    # The reference computes one value per training sample (its bin's smoothed sqrt count or
    # clipped count), takes 1/x, and rescales the per-sample list by N / sum; the per-bin table
    # looked up at each sample's bin must give the same numbers.
    gen = np.random.default_rng(1)
    labels = np.concatenate([gen.integers(0, 30, 400), gen.integers(30, 60, 12)])
    counts = np.bincount(labels, minlength=60).astype(float)
    kernel = lds_kernel("gaussian", 5, 2.0)
    value = np.sqrt(counts) if kind == "sqinv" else np.clip(counts, 5, 1000)
    per_sample = 1.0 / convolve1d(value, kernel, mode="constant")[labels]
    expected = per_sample * len(labels) / per_sample.sum()
    table = bin_weights(torch.tensor(counts), kind, lds=torch.tensor(kernel))
    actual = sample_weights(table, torch.from_numpy(labels))
    torch.testing.assert_close(actual, torch.from_numpy(expected))


def test_bad_bin_weight_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        bin_weights([1, 2], "none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="all zero"):
        bin_weights([0, 0, 0], "sqinv")
    with pytest.raises(ValueError, match="non-negative"):
        bin_weights([1, -1, 2], "sqinv")
    with pytest.raises(ValueError, match="1-D"):
        bin_weights([[1, 2], [3, 4]], "sqinv")
    with pytest.raises(ValueError, match="1-D"):
        bin_weights([], "sqinv")
    with pytest.raises(ValueError, match="finite"):
        bin_weights([1, float("inf")], "inv")
    with pytest.raises(ValueError, match="clip"):
        bin_weights([1, 2], "inv", clip=(5, 2))
    with pytest.raises(ValueError, match="clip"):
        bin_weights([1, 2], "inv", clip=(0, 0))
    with pytest.raises(ValueError, match="clip"):
        bin_weights([1, 2], "inv", clip=(-1, None))
    with pytest.raises(ValueError, match="odd"):
        bin_weights([1, 2, 3], "sqinv", lds=[0.5, 0.5])
    with pytest.raises(ValueError, match="positive centre"):
        bin_weights([1, 2, 3], "sqinv", lds=[1.0, 0.0, 1.0])


# --- sample_weights -------------------------------------------------------------------------------


def test_sample_weights_gathers_without_host_sync():
    table = bin_weights([4, 0, 1, 9], "sqinv")
    bins = torch.tensor([3, 0, 1, 3, 2])
    with HostSyncRecorder() as rec:
        weights = sample_weights(table, bins)
    assert rec.syncs == []
    _close(weights, [7 / 9, 7 / 6, 7 / 3, 7 / 9, 7 / 3])


def test_sample_weights_bad_inputs_raise():
    table = torch.ones(4)
    with pytest.raises(ValueError, match="weight_table"):
        sample_weights(torch.ones(2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="bins must have shape"):
        sample_weights(table, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="integer"):
        sample_weights(table, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="device"):
        sample_weights(table, torch.tensor([0, 1], device="meta"))


def test_docstring_examples_run():
    module = importlib.import_module("elta_lightning.longtail.reweighting")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
