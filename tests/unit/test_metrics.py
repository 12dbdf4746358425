"""Unit tests of elta_lightning.metrics: hand values, scipy/numpy references, boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, MinMetric

from elta_lightning.losses import mean_score
from elta_lightning.metrics import (
    HIGHER_IS_BETTER,
    EarthMoversDistance,
    IAAMetrics,
    PredictionCollector,
    RegionMAE,
    ThresholdAccuracy,
    best_so_far,
    earth_movers_distance,
    region_cuts,
    region_mae,
    threshold_accuracy,
)
from elta_lightning.scales import AADB_SCALE, AVA_SCALE, PARA_SCALE

BASE_KEYS = {"srcc", "plcc", "acc", "mae", "mse", "mae_low", "mae_mid", "mae_high", "mae_common"}


def _tied_data(n: int = 300, seed: int = 0):
    """Scores with many ties: targets on a 0.5 grid, predictions on a 0.25 grid (some at 5.0)."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.round((5.0 + 1.2 * torch.randn(n, generator=gen)) * 2) / 2
    pred = torch.round((0.6 * target + 2.0 + 0.8 * torch.randn(n, generator=gen)) * 4) / 4
    target_dist = torch.softmax(2 * torch.randn(n, 10, generator=gen), dim=1)
    pred_dist = torch.softmax(2 * torch.randn(n, 10, generator=gen), dim=1)
    return pred, target, pred_dist, target_dist


def _np_emd(p: np.ndarray, q: np.ndarray, r: int) -> np.ndarray:
    d = np.abs(np.cumsum(p, axis=1) - np.cumsum(q, axis=1))
    return np.mean(d**r, axis=1) ** (1.0 / r)


# ---------------------------------------------------------------------------- ThresholdAccuracy
def test_threshold_accuracy_hand_values_and_score_at_threshold():
    # threshold 5: high iff > 5 (5.0 itself is low)
    # preds  [5.0, 5.1, 4.9, 6.0] -> high? [F, T, F, T]
    # target [5.0, 5.0, 5.1, 7.0] -> high? [F, F, T, T]
    # agree  [T, F, F, T] -> 2 / 4
    pred = torch.tensor([5.0, 5.1, 4.9, 6.0])
    target = torch.tensor([5.0, 5.0, 5.1, 7.0])
    metric = ThresholdAccuracy(threshold=5.0)
    metric.update(pred, target)
    torch.testing.assert_close(metric.compute(), torch.tensor(0.5))
    torch.testing.assert_close(threshold_accuracy(pred, target, 5.0), torch.tensor(0.5))
    # both exactly at the threshold: both low -> correct; one just above: wrong
    torch.testing.assert_close(
        threshold_accuracy(torch.tensor([5.0, 5.0]), torch.tensor([5.0, 5.0 + 1e-6]), 5.0),
        torch.tensor(0.5),
    )


def test_threshold_accuracy_vs_numpy_and_attributes():
    pred, target, _, _ = _tied_data()
    assert (pred == 5.0).any() and (target == 5.0).any()  # the threshold case is exercised
    metric = ThresholdAccuracy(5.0)
    for chunk in range(0, 300, 64):
        metric.update(pred[chunk : chunk + 64], target[chunk : chunk + 64])
    expected = np.mean((pred.numpy() > 5.0) == (target.numpy() > 5.0))
    assert metric.compute().item() == pytest.approx(expected, abs=1e-7)
    assert metric.higher_is_better is True and metric.is_differentiable is False
    assert metric.full_state_update is False
    assert metric._reductions["correct"].__name__ == "dim_zero_sum"


# ---------------------------------------------------------------------------- EMD
def test_emd_metric_hand_values_r1_r2():
    # sample 0: |CDF diff| = [0.3, 0.3, 0] -> EMD1 = 0.2, EMD2 = sqrt(0.06)
    # sample 1: |CDF diff| = [1, 1, 0]     -> EMD1 = 2/3, EMD2 = sqrt(2/3)
    p = torch.tensor([[0.2, 0.5, 0.3], [0.0, 0.0, 1.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    emd1, emd2 = EarthMoversDistance(r=1), EarthMoversDistance(r=2)
    for metric in (emd1, emd2):
        metric.update(p[:1], q[:1])
        metric.update(p[1:], q[1:])
    torch.testing.assert_close(emd1.compute(), torch.tensor((0.2 + 2 / 3) / 2))
    torch.testing.assert_close(
        emd2.compute(), torch.tensor((math.sqrt(0.06) + math.sqrt(2 / 3)) / 2)
    )
    torch.testing.assert_close(earth_movers_distance(p, q, r=1), emd1.compute())
    assert emd2.higher_is_better is False
    with pytest.raises(ValueError, match="r must be"):
        EarthMoversDistance(r=0)


def test_emd_metric_vs_numpy():
    _, _, pred_dist, target_dist = _tied_data()
    for r in (1, 2):
        metric = EarthMoversDistance(r=r)
        for chunk in range(0, 300, 37):
            metric.update(pred_dist[chunk : chunk + 37], target_dist[chunk : chunk + 37])
        expected = _np_emd(pred_dist.double().numpy(), target_dist.double().numpy(), r).mean()
        assert metric.compute().item() == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- RegionMAE
def test_region_mae_boundaries_hand_values():
    cuts = (4.0, 6.0)
    # target 4.0 is on the low cut -> low; 6.0 on the high cut -> high; 4.0 < 5.0, 5.5 < 6 -> mid
    target = torch.tensor([3.0, 4.0, 5.0, 5.5, 6.0, 7.0])
    pred = torch.tensor([3.5, 5.0, 5.0, 5.0, 4.0, 7.25])
    # abs err  [0.5, 1.0, 0.0, 0.5, 2.0, 0.25]
    # low  {3.0, 4.0}: (0.5 + 1.0) / 2 = 0.75
    # mid  {5.0, 5.5}: (0.0 + 0.5) / 2 = 0.25
    # high {6.0, 7.0}: (2.0 + 0.25) / 2 = 1.125
    metric = RegionMAE(cuts)
    metric.update(pred, target)
    torch.testing.assert_close(metric.compute(), torch.tensor([0.75, 0.25, 1.125]))
    torch.testing.assert_close(metric.total, torch.tensor([2, 2, 2]))  # every sample once
    assert metric.compute_dict().keys() == {"low", "mid", "high"}
    torch.testing.assert_close(region_mae(pred, target, cuts), metric.compute())


def test_region_mae_equal_cuts_counts_sample_on_cut_once_as_low():
    # cuts (5, 5): target 5.0 is low (not also high); nothing is mid -> NaN
    metric = RegionMAE((5.0, 5.0))
    metric.update(torch.tensor([4.0, 5.5, 6.0]), torch.tensor([5.0, 5.0, 6.5]))
    torch.testing.assert_close(metric.total, torch.tensor([2, 0, 1]))
    values = metric.compute()
    torch.testing.assert_close(values[0], torch.tensor(0.75))  # (1.0 + 0.5) / 2
    assert torch.isnan(values[1])
    torch.testing.assert_close(values[2], torch.tensor(0.5))


def test_region_mae_empty_region_is_nan_and_bad_cuts_fail():
    metric = RegionMAE((2.0, 8.0))
    metric.update(torch.tensor([5.0, 6.0]), torch.tensor([5.5, 5.5]))  # all mid
    values = metric.compute()
    assert torch.isnan(values[0]) and torch.isnan(values[2])
    torch.testing.assert_close(values[1], torch.tensor(0.5))
    with pytest.raises(ValueError, match="cut_low <= cut_high"):
        RegionMAE((6.0, 4.0))
    with pytest.raises(ValueError, match="cut_low, cut_high"):
        RegionMAE((1.0, 2.0, 3.0))


def test_region_mae_vs_numpy_on_ties_with_cuts_from_training_labels():
    pred, target, _, _ = _tied_data()
    train = _tied_data(n=1000, seed=1)[1]
    cuts = region_cuts(train)
    assert (target == cuts[0]).any() or (target == cuts[1]).any()  # boundary ties exercised
    metric = RegionMAE(cuts)
    for chunk in range(0, 300, 50):
        metric.update(pred[chunk : chunk + 50], target[chunk : chunk + 50])
    p, t = pred.double().numpy(), target.double().numpy()
    low = t <= cuts[0]
    high = t >= cuts[1]
    mid = ~low & ~high
    assert low.sum() + mid.sum() + high.sum() == 300
    expected = [np.abs(p - t)[m].mean() for m in (low, mid, high)]
    np.testing.assert_allclose(metric.compute().numpy(), expected, rtol=1e-6)
    assert metric.total.sum().item() == 300


def test_region_cuts_match_numpy_linear_quantiles():
    scores = _tied_data(n=777, seed=3)[1]
    expected = np.quantile(scores.double().numpy(), [0.2, 0.8], method="linear")
    assert region_cuts(scores) == pytest.approx(tuple(expected), abs=1e-12)
    # hand value: 0..10 -> 20th percentile 2, 80th 8; 0..9 -> 1.8 and 7.2 (linear interpolation)
    assert region_cuts(torch.arange(11.0)) == (2.0, 8.0)
    assert region_cuts(torch.arange(10.0)) == pytest.approx((1.8, 7.2))
    assert region_cuts(torch.arange(10.0), 0.1, 0.9) == pytest.approx((0.9, 8.1))
    with pytest.raises(ValueError, match="low_q"):
        region_cuts(scores, 0.9, 0.1)
    with pytest.raises(ValueError, match="at least one"):
        region_cuts(torch.tensor([]))
    with pytest.raises(ValueError, match="NaN"):
        region_cuts(torch.tensor([1.0, float("nan")]))


# ---------------------------------------------------------------------------- PredictionCollector
def test_prediction_collector_sorts_by_index():
    collector = PredictionCollector()
    collector.update(torch.tensor([4, 1]), torch.tensor([4.5, 1.5]), torch.tensor([4.0, 1.0]))
    collector.update(
        torch.tensor([0, 3, 2]), torch.tensor([0.5, 3.5, 2.5]), torch.tensor([0.0, 3, 2])
    )
    out = collector.compute()
    torch.testing.assert_close(out["index"], torch.arange(5))
    torch.testing.assert_close(out["pred"], torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5]))
    torch.testing.assert_close(out["target"], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    assert out["index"].dtype == torch.long


def test_prediction_collector_raises_on_duplicate_index():
    collector = PredictionCollector()
    collector.update(torch.tensor([0, 1, 2]), torch.zeros(3), torch.zeros(3))
    collector.update(torch.tensor([2]), torch.zeros(1), torch.zeros(1))  # padding duplicate
    with pytest.raises(ValueError, match=r"repeated dataset indices.*\[2\]"):
        collector.compute()
    collector.reset()
    collector.update(torch.tensor([2, 0, 1]), torch.zeros(3), torch.zeros(3))
    assert collector.compute()["index"].tolist() == [0, 1, 2]


def test_prediction_collector_input_checks():
    collector = PredictionCollector()
    with pytest.raises(TypeError, match="integers"):
        collector.update(torch.tensor([0.0]), torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="shape"):
        collector.update(torch.tensor([0, 1]), torch.zeros(1), torch.zeros(1))


# ---------------------------------------------------------------------------- IAAMetrics
def _reference(pred, target, pred_dist, target_dist, cuts, scale):
    """All metrics in float64 numpy / scipy."""
    p, t = pred.double().numpy(), target.double().numpy()
    low, high = t <= cuts[0], t >= cuts[1]
    mid = ~low & ~high
    err = np.abs(p - t)
    ref = {
        "srcc": stats.spearmanr(p, t).statistic,
        "plcc": stats.pearsonr(p, t).statistic,
        "acc": np.mean((p > scale.threshold) == (t > scale.threshold)),
        "mae": err.mean(),
        "mse": np.mean((p - t) ** 2),
        "mae_low": err[low].mean(),
        "mae_mid": err[mid].mean(),
        "mae_high": err[high].mean(),
        "mae_common": err.mean() * scale.to_common,
    }
    if pred_dist is not None:
        pd, td = pred_dist.double().numpy(), target_dist.double().numpy()
        ref["emd1"] = _np_emd(pd, td, 1).mean()
        ref["emd2"] = _np_emd(pd, td, 2).mean()
    return ref


@pytest.mark.parametrize("with_distribution", [True, False])
def test_iaa_metrics_vs_scipy_on_tied_data(with_distribution):
    pred, target, pred_dist, target_dist = _tied_data()
    cuts = region_cuts(_tied_data(n=1000, seed=1)[1])
    metrics = IAAMetrics(AVA_SCALE, cuts, with_distribution=with_distribution)
    for chunk in range(0, 300, 64):  # last batch has 44 samples
        sl = slice(chunk, chunk + 64)
        metrics.update(pred[sl], target[sl], pred_dist[sl], target_dist[sl])
    values = metrics.compute()
    expected_keys = BASE_KEYS | ({"emd1", "emd2"} if with_distribution else set())
    assert set(values) == expected_keys
    ref = _reference(
        pred, target, pred_dist if with_distribution else None, target_dist, cuts, AVA_SCALE
    )
    for key, value in values.items():
        assert value.ndim == 0, key
        assert value.item() == pytest.approx(ref[key], abs=2e-6), key


def test_iaa_metrics_accumulation_equals_one_update():
    pred, target, pred_dist, target_dist = _tied_data(n=101, seed=5)
    one = IAAMetrics(AVA_SCALE, (4.5, 6.0), with_distribution=True)
    one.update(pred, target, pred_dist, target_dist)
    many = IAAMetrics(AVA_SCALE, (4.5, 6.0), with_distribution=True)
    for start, stop in [(0, 1), (1, 33), (33, 34), (34, 90), (90, 101)]:  # incl. size-1 batches
        many.update(
            pred[start:stop], target[start:stop], pred_dist[start:stop], target_dist[start:stop]
        )
    a, b = one.compute(), many.compute()
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_iaa_metrics_common_scale_reset_and_errors():
    # PARA: native 1..5, to_common 2 -> mae_common = 2 * mae
    pred = torch.tensor([3.0, 4.0, 2.0, 4.5])
    target = torch.tensor([3.5, 4.0, 1.0, 5.0])
    # abs err [0.5, 0, 1, 0.5] -> MAE 0.5, MSE (0.25 + 0 + 1 + 0.25) / 4 = 0.375
    # threshold 3: pred high [F, T, F, T], target high [T, T, F, T] -> acc 3/4
    metrics = IAAMetrics(PARA_SCALE, (2.0, 4.5), with_distribution=False)
    metrics.update(pred, target)
    values = metrics.compute()
    torch.testing.assert_close(values["mae"], torch.tensor(0.5))
    torch.testing.assert_close(values["mae_common"], torch.tensor(1.0))
    torch.testing.assert_close(values["mse"], torch.tensor(0.375))
    torch.testing.assert_close(values["acc"], torch.tensor(0.75))
    # regions (2.0, 4.5): low {1.0}: 1.0; mid {3.5, 4.0}: 0.25; high {5.0}: 0.5
    torch.testing.assert_close(values["mae_low"], torch.tensor(1.0))
    torch.testing.assert_close(values["mae_mid"], torch.tensor(0.25))
    torch.testing.assert_close(values["mae_high"], torch.tensor(0.5))
    # AADB: to_common 10
    aadb = IAAMetrics(AADB_SCALE, (0.3, 0.7), with_distribution=False)
    aadb.update(torch.tensor([0.5, 0.6]), torch.tensor([0.4, 0.6]))
    torch.testing.assert_close(aadb.compute()["mae_common"], torch.tensor(0.5))
    # reset forgets everything
    metrics.reset()
    metrics.update(target, target)
    torch.testing.assert_close(metrics.compute()["mae"], torch.tensor(0.0))
    # distributions are required when configured
    with_dist = IAAMetrics(AVA_SCALE, (4.0, 6.0), with_distribution=True)
    with pytest.raises(ValueError, match="pred_dist and target_dist"):
        with_dist.update(pred, target)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        with_dist.update(pred[:2], target)


def test_iaa_metrics_with_distribution_from_mean_scores():
    """The usual wiring: scores are the mean scores of the distributions."""
    _, _, pred_dist, target_dist = _tied_data(n=64, seed=2)
    levels = AVA_SCALE.levels_tensor()
    pred, target = mean_score(pred_dist, levels), mean_score(target_dist, levels)
    metrics = IAAMetrics(AVA_SCALE, (4.5, 6.5), with_distribution=True)
    metrics.update(pred, target, pred_dist, target_dist)
    values = metrics.compute()
    ref = _reference(pred, target, pred_dist, target_dist, (4.5, 6.5), AVA_SCALE)
    for key in ("srcc", "plcc", "emd1", "emd2", "mae"):
        assert values[key].item() == pytest.approx(ref[key], abs=2e-6), key


def test_iaa_metrics_submetrics_registered_and_moved():
    metrics = IAAMetrics(AVA_SCALE, (4.0, 6.0), with_distribution=True)
    children = {name for name, module in metrics.named_modules() if isinstance(module, Metric)}
    assert children == {f"metrics.{k}" for k in ("srcc", "plcc", "acc", "mae", "mse", "region")} | {
        "metrics.emd1",
        "metrics.emd2",
    }
    # states follow .to() (what Lightning does with the LightningModule) ...
    holder = torch.nn.Module()
    holder.val_metrics = metrics
    holder.to("meta")
    for module in metrics.modules():
        if isinstance(module, Metric):
            assert module.device.type == "meta"
    # ... and are not saved in checkpoints
    assert dict(metrics.state_dict()) == {}


def test_update_never_reads_tensor_values_on_host():
    """On the meta device any .item()/bool(tensor) raises, so this proves update is sync-free."""
    with pytest.raises(RuntimeError):
        torch.zeros(1, device="meta").item()  # the premise of this test
    meta = torch.device("meta")
    metrics = IAAMetrics(AVA_SCALE, (4.0, 6.0), with_distribution=True).to(meta)
    collector = PredictionCollector().to(meta)
    for batch in (8, 1):
        score = torch.empty(batch, device=meta)
        dist = torch.empty(batch, 10, device=meta)
        metrics.update(score, score, dist, dist)
        collector.update(torch.empty(batch, dtype=torch.long, device=meta), score, score)
    assert metrics.metrics["mae"].total.device.type == "meta"


def test_half_precision_inputs_are_accumulated_in_float32():
    pred, target, pred_dist, target_dist = _tied_data(n=64, seed=4)
    full = IAAMetrics(AVA_SCALE, (4.5, 6.0), with_distribution=True)
    full.update(pred, target, pred_dist, target_dist)
    half = IAAMetrics(AVA_SCALE, (4.5, 6.0), with_distribution=True)
    # scores on a 0.25 grid are exact in bfloat16 below 8; distributions are not
    half.update(pred.bfloat16(), target.bfloat16(), pred_dist, target_dist)
    a, b = full.compute(), half.compute()
    for key in a:
        assert b[key].dtype == torch.float32, key
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_best_so_far_and_directions():
    assert isinstance(best_so_far("srcc"), MaxMetric)
    assert isinstance(best_so_far("mae_high"), MinMetric)
    assert set(HIGHER_IS_BETTER) == BASE_KEYS | {"emd1", "emd2"}
    tracker = best_so_far("plcc")
    for value in (0.5, 0.7, 0.6):
        tracker.update(torch.tensor(value))
    torch.testing.assert_close(tracker.compute(), torch.tensor(0.7))
    with pytest.raises(KeyError, match="unknown metric key"):
        best_so_far("loss")


@pytest.mark.parametrize("module_name", ["elta_lightning.metrics", "elta_lightning.losses"])
def test_docstring_examples_run(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
