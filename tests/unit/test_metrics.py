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
    BIN_EDGE_TOLERANCE,
    HIGHER_IS_BETTER,
    SHOT_NAMES,
    EarthMoversDistance,
    IAAMetrics,
    IndexedCollector,
    RegionMAE,
    ShotBins,
    ShotMAE,
    ThresholdAccuracy,
    best_so_far,
    earth_movers_distance,
    num_score_bins,
    region_cuts,
    region_mae,
    score_bin_counts,
    score_bins,
    shot_mae,
    shot_regions,
    threshold_accuracy,
)
from elta_lightning.scales import AADB_SCALE, AVA_SCALE, PARA_SCALE

BASE_KEYS = {"srcc", "plcc", "acc", "mae", "mse", "mae_low", "mae_mid", "mae_high", "mae_common"}
SHOT_KEYS = {"mae_many", "mae_medium", "mae_few", "mae_balanced"}


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


# ---------------------------------------------------------------------------- IndexedCollector
def test_indexed_collector_sorts_by_index():
    collector = IndexedCollector(["pred", "target"])
    collector.update(
        torch.tensor([4, 1]), pred=torch.tensor([4.5, 1.5]), target=torch.tensor([4.0, 1.0])
    )
    collector.update(
        torch.tensor([0, 3, 2]),
        pred=torch.tensor([0.5, 3.5, 2.5]),
        target=torch.tensor([0.0, 3, 2]),
    )
    out = collector.compute()
    assert list(out) == ["index", "pred", "target"]
    torch.testing.assert_close(out["index"], torch.arange(5))
    torch.testing.assert_close(out["pred"], torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5]))
    torch.testing.assert_close(out["target"], torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]))
    assert out["index"].dtype == torch.long


def test_indexed_collector_raises_on_duplicate_index():
    collector = IndexedCollector(["pred", "target"])
    collector.update(torch.tensor([0, 1, 2]), pred=torch.zeros(3), target=torch.zeros(3))
    collector.update(torch.tensor([2]), pred=torch.zeros(1), target=torch.zeros(1))  # padding
    with pytest.raises(ValueError, match=r"repeated dataset indices.*\[2\].*UnrepeatedDistributed"):
        collector.compute()
    collector.reset()
    collector.update(torch.tensor([2, 0, 1]), pred=torch.zeros(3), target=torch.zeros(3))
    assert collector.compute()["index"].tolist() == [0, 1, 2]


def test_indexed_collector_column_kinds():
    """Rows of any width; bool columns come back as bool, half precision as float32."""
    collector = IndexedCollector(["logits", "readable", "score", "label"])
    logits = torch.arange(6.0).reshape(3, 2)
    collector.update(
        torch.tensor([2, 0, 1], dtype=torch.int32),
        logits=logits,
        readable=torch.tensor([True, False, True]),
        score=torch.tensor([2.5, 0.5, 1.5], dtype=torch.float16),
        label=torch.tensor([7, 5, 6], dtype=torch.int16),
    )
    out = collector.compute()
    assert out["index"].tolist() == [0, 1, 2]
    torch.testing.assert_close(out["logits"], logits[[1, 2, 0]])
    assert out["readable"].dtype == torch.bool
    assert out["readable"].tolist() == [False, True, True]
    assert out["score"].dtype == torch.float32
    assert out["score"].tolist() == [0.5, 1.5, 2.5]
    assert out["label"].dtype == torch.long
    assert out["label"].tolist() == [5, 6, 7]
    # the states themselves: uint8 for flags (gathers on every backend)
    assert collector.readable[0].dtype == torch.uint8


def test_indexed_collector_without_rows_gives_empty_columns():
    collector = IndexedCollector(["pred"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        out = collector.compute()
    assert out["index"].dtype == torch.long
    assert out["index"].numel() == 0 and out["pred"].numel() == 0


def test_indexed_collector_input_checks():
    collector = IndexedCollector(["pred", "target"])
    with pytest.raises(TypeError, match="integers"):
        collector.update(torch.tensor([0.0]), pred=torch.zeros(1), target=torch.zeros(1))
    with pytest.raises(TypeError, match="integers"):
        collector.update(torch.tensor([True]), pred=torch.zeros(1), target=torch.zeros(1))
    with pytest.raises(ValueError, match="one row per index"):
        collector.update(torch.tensor([0, 1]), pred=torch.zeros(1), target=torch.zeros(2))
    with pytest.raises(ValueError, match="one row per index"):
        collector.update(torch.tensor([0]), pred=torch.tensor(1.0), target=torch.zeros(1))
    with pytest.raises(ValueError, match="index must have shape"):
        collector.update(
            torch.zeros(1, 1, dtype=torch.long), pred=torch.zeros(1), target=torch.zeros(1)
        )
    with pytest.raises(ValueError, match="exactly the columns"):
        collector.update(torch.tensor([0]), pred=torch.zeros(1))
    with pytest.raises(ValueError, match="exactly the columns"):
        collector.update(
            torch.tensor([0]), pred=torch.zeros(1), target=torch.zeros(1), x=torch.zeros(1)
        )
    assert collector.index == []  # nothing was stored by a rejected batch
    for bad in (["index"], ["pred", "pred"], ["update"], ["2x"]):
        with pytest.raises(ValueError):
            IndexedCollector(bad)
    with pytest.raises(TypeError, match="sequence of names"):
        IndexedCollector("pred")


DDP_COLLECTOR_SCRIPT = """
import json, sys
from pathlib import Path

import torch
import torch.distributed as dist

from elta_lightning.metrics import IndexedCollector

CASES = {  # per case: the batches of dataset indices of rank 0 and of rank 1
    "second_rank_empty": ([[3, 0], [4]], []),
    "first_rank_empty": ([], [[1, 2]]),
    "uneven": ([[0, 2, 4]], [[1], [3]]),
    "all_empty": ([], []),
    "repeated": ([[0, 1]], [[1]]),
}


def worker(rank, out):
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    results = {}
    for name, batches in CASES.items():
        collector = IndexedCollector(["pred", "logits", "readable"])
        for rows in batches[rank]:
            index = torch.tensor(rows)
            collector.update(
                index,
                pred=index.half() / 2,
                logits=torch.stack([index.float(), -index.float()], dim=1),
                readable=index % 2 == 0,
            )
        try:
            table = collector.compute()
            results[name] = {k: [str(v.dtype), list(v.shape), v.tolist()] for k, v in table.items()}
        except ValueError as error:
            results[name] = str(error)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    # fork: the processes start in a moment (spawn would import torch in each again)
    torch.multiprocessing.start_processes(
        worker, args=(sys.argv[1],), nprocs=2, start_method="fork"
    )
"""


def test_indexed_collector_gathers_uneven_and_empty_shards_under_ddp(tmp_path):
    """Two gloo processes; a process without rows still gathers (dtypes and row shapes agree)."""
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "collector_ddp.py"
    script.write_text(DDP_COLLECTOR_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    results = ranks[0]
    for name, expected in (
        ("second_rank_empty", [0, 3, 4]),
        ("first_rank_empty", [1, 2]),
        ("uneven", [0, 1, 2, 3, 4]),
    ):
        table = results[name]
        n = len(expected)
        assert table["index"] == ["torch.int64", [n], expected], name
        assert table["pred"] == ["torch.float32", [n], [i / 2 for i in expected]], name
        assert table["logits"] == ["torch.float32", [n, 2], [[i, -i] for i in expected]], name
        assert table["readable"] == ["torch.bool", [n], [i % 2 == 0 for i in expected]], name
    assert results["all_empty"]["index"] == ["torch.int64", [0], []]
    assert "repeated dataset indices (first: [1])" in results["repeated"]


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
    collector = IndexedCollector(["pred", "target", "dist", "readable"]).to(meta)
    for batch in (8, 1):
        score = torch.empty(batch, device=meta)
        dist = torch.empty(batch, 10, device=meta)
        metrics.update(score, score, dist, dist)
        index = torch.empty(batch, dtype=torch.long, device=meta)
        flags = torch.empty(batch, dtype=torch.bool, device=meta)
        collector.update(index, pred=score, target=score, dist=dist, readable=flags)
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
    assert set(HIGHER_IS_BETTER) == BASE_KEYS | {"emd1", "emd2"} | SHOT_KEYS
    assert not any(HIGHER_IS_BETTER[key] for key in SHOT_KEYS)
    assert isinstance(best_so_far("mae_few"), MinMetric)
    tracker = best_so_far("plcc")
    for value in (0.5, 0.7, 0.6):
        tracker.update(torch.tensor(value))
    torch.testing.assert_close(tracker.compute(), torch.tensor(0.7))
    with pytest.raises(KeyError, match="unknown metric key"):
        best_so_far("loss")


@pytest.mark.parametrize(
    "module_name",
    [
        "elta_lightning.metrics.accuracy",
        "elta_lightning.metrics.emd",
        "elta_lightning.metrics.regions",
        "elta_lightning.metrics.shots",
        "elta_lightning.metrics.collector",
        "elta_lightning.metrics.iaa",
        "elta_lightning.losses",
    ],
)
def test_docstring_examples_run(module_name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module_name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------- ShotMAE (DIR shots)
def test_shot_regions_thresholds_are_count_based():
    # many: count >= many; few: count < few; medium otherwise
    counts = torch.tensor([0, 9, 10, 99, 100, 353])
    torch.testing.assert_close(
        shot_regions(counts, many=100, few=10), torch.tensor([2, 2, 1, 1, 0, 0])
    )
    # DIR's "> 100" / "< 20" is many=101, few=20
    torch.testing.assert_close(
        shot_regions(torch.tensor([19, 20, 100, 101]), many=101, few=20), torch.tensor([2, 1, 1, 0])
    )
    # few == many: no medium bin
    torch.testing.assert_close(
        shot_regions(torch.tensor([4, 5, 6]), many=5, few=5), torch.tensor([2, 0, 0])
    )
    assert shot_regions(torch.tensor([1, 2], dtype=torch.int32), 2, 1).dtype == torch.long
    with pytest.raises(ValueError, match="few <= many"):
        shot_regions(counts, many=10, few=20)
    with pytest.raises(TypeError, match="integers"):
        shot_regions(torch.tensor([1.0, 2.0]), many=2, few=1)


def test_score_bins_common_scale_edges_and_clamp():
    assert num_score_bins(0.1) == 100 and num_score_bins(2.5) == 4 and num_score_bins(3.0) == 3
    for bad in (0.0, -1.0, float("nan"), float("inf"), 25.0):
        with pytest.raises(ValueError, match="bin"):
            num_score_bins(bad)
    # AVA (to_common 1), width 2.5: [0, 2.5), [2.5, 5), [5, 7.5), [7.5, 10]; out of range clamps
    ava = torch.tensor([-1.0, 0.0, 2.49, 2.5, 5.0, 7.49, 7.5, 10.0, 12.0])
    torch.testing.assert_close(
        score_bins(ava, 2.5, to_common=1.0), torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3])
    )
    # PARA native 1..5 (to_common 2), width 1: native 3.3 -> common 6.6 -> bin 6
    para = torch.tensor([1.0, 3.3, 4.95, 5.0])
    torch.testing.assert_close(score_bins(para, 1.0, to_common=2.0), torch.tensor([2, 6, 9, 9]))
    # decimal scores on a bin edge land in the bin they name, though e.g. 0.66 * 10 / 0.1 or
    # 0.07 / 0.01 is 65.999... / 6.999... in floating point: AVA, PARA, AADB steps of one bin
    for to_common, width, step in [(1.0, 0.1, 0.1), (2.0, 0.1, 0.05), (10.0, 0.1, 0.01)]:
        index = torch.arange(num_score_bins(width))
        for dtype in (torch.float32, torch.float64):
            native = (index.double() * step).to(dtype)
            bins = score_bins(native, width, to_common)
            torch.testing.assert_close(bins, index, msg=f"{to_common} {dtype}")
    torch.testing.assert_close(
        score_bins(torch.arange(1000) / 100, 0.01, 1.0), torch.arange(1000), msg="1000 bins"
    )
    # AADB native 0..1 (to_common 10)
    torch.testing.assert_close(
        score_bins(torch.tensor([0.0, 0.66, 1.0]), 0.1, to_common=10.0), torch.tensor([0, 66, 99])
    )
    assert BIN_EDGE_TOLERANCE < 1e-2
    # training counts per bin: every score counted once
    counts = score_bin_counts(ava, 2.5, to_common=1.0)
    torch.testing.assert_close(counts, torch.tensor([3, 1, 2, 3]))
    assert int(counts.sum()) == ava.numel()


def _hand_shot_setup():
    """4 bins of width 2.5 (AVA), training counts [3, 50, 200, 0], many=100, few=10:
    regions [few, medium, many, few]; no test target in the only medium bin."""
    shot_of_bin = shot_regions(torch.tensor([3, 50, 200, 0]), many=100, few=10)
    target = torch.tensor([1.0, 5.0, 6.0, 7.5, 10.0])  # bins 0, 2, 2, 3, 3 (10.0 is clamped)
    pred = torch.tensor([2.0, 5.5, 5.25, 7.0, 8.0])  # |e| = 1.0, 0.5, 0.75, 0.5, 2.0
    return shot_of_bin, pred, target


def test_shot_mae_hand_values_with_empty_region_is_nan():
    shot_of_bin, pred, target = _hand_shot_setup()
    torch.testing.assert_close(shot_of_bin, torch.tensor([2, 1, 0, 2]))
    metric = ShotMAE(bin_width=2.5, to_common=1.0, shot_of_bin=shot_of_bin)
    metric.update(pred, target)
    values = metric.compute()
    assert list(values) == ["many", "medium", "few", "balanced"] and SHOT_NAMES == (
        "many",
        "medium",
        "few",
    )
    # many {bin 2: 5.0, 6.0}: (0.5 + 0.75) / 2
    torch.testing.assert_close(values["many"], torch.tensor(0.625))
    # medium {bin 1}: no test sample -> NaN
    assert values["medium"].ndim == 0 and torch.isnan(values["medium"])
    # few {bin 0: 1.0; bin 3: 7.5, 10.0}: (1.0 + 0.5 + 2.0) / 3, sample-weighted
    torch.testing.assert_close(values["few"], torch.tensor(3.5 / 3))
    # balanced: per-bin MAE of the evaluated bins 0, 2, 3: 1.0, 0.625, 1.25 -> mean 2.875 / 3
    torch.testing.assert_close(values["balanced"], torch.tensor(2.875 / 3))
    # nothing dropped: per-bin counts add up to N
    torch.testing.assert_close(metric.total, torch.tensor([1, 0, 2, 2]))
    assert int(metric.total.sum()) == target.numel()
    # functional form agrees
    functional = shot_mae(pred, target, 2.5, 1.0, shot_of_bin)
    for key, value in values.items():
        torch.testing.assert_close(functional[key], value, equal_nan=True, msg=key)
    # before any sample: everything NaN, never an exception
    fresh = ShotMAE(2.5, 1.0, [2, 1, 0, 2])
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = fresh.compute()
    assert all(torch.isnan(v) for v in empty.values())


def test_shot_mae_balanced_is_unweighted_mean_over_evaluated_bins():
    # one region holds two bins: 3 samples with |e| = 0 in bin 0, 1 sample with |e| = 2 in bin 1
    metric = ShotMAE(bin_width=5.0, to_common=1.0, shot_of_bin=[0, 0])
    metric.update(torch.tensor([1.0, 2.0, 3.0, 8.0]), torch.tensor([1.0, 2.0, 3.0, 6.0]))
    values = metric.compute()
    torch.testing.assert_close(values["many"], torch.tensor(0.5))  # (0 + 0 + 0 + 2) / 4
    torch.testing.assert_close(values["balanced"], torch.tensor(1.0))  # (0 + 2) / 2
    assert torch.isnan(values["medium"]) and torch.isnan(values["few"])
    # a bin without test samples does not count in the balanced mean
    metric = ShotMAE(bin_width=2.5, to_common=1.0, shot_of_bin=[0, 1, 2, 2])
    metric.update(torch.tensor([1.0, 9.0]), torch.tensor([2.0, 8.0]))  # bins 0 and 3, |e| = 1
    torch.testing.assert_close(metric.compute()["balanced"], torch.tensor(1.0))


def _numpy_shot_mae(pred, target, bin_width, to_common, counts, many, few):
    p, t = pred.double().numpy(), target.double().numpy()
    num_bins = round(10 / bin_width)
    bins = np.floor(t * to_common / bin_width + BIN_EDGE_TOLERANCE).astype(int)
    bins = np.clip(bins, 0, num_bins - 1)
    c = np.asarray(counts)
    shot = np.where(c >= many, 0, np.where(c < few, 2, 1))[bins]
    err = np.abs(p - t)
    ref = {name: err[shot == code].mean() for code, name in enumerate(SHOT_NAMES)}
    ref["balanced"] = np.mean([err[bins == b].mean() for b in np.unique(bins)])
    return ref, bins, shot


def _random_para_shots(n: int = 200, seed: int = 7):
    """PARA-like scores (native 1..5, to_common 2), a skewed training set, width 0.5 -> 20 bins."""
    gen = torch.Generator().manual_seed(seed)
    train = (3.0 + 0.6 * torch.randn(5000, generator=gen)).clamp(1.0, 5.0)
    target = 1.0 + 4.0 * torch.rand(n, generator=gen)  # uniform: reaches the tails
    pred = (target + 0.4 * torch.randn(n, generator=gen)).clamp(1.0, 5.0)
    counts = score_bin_counts(train, 0.5, to_common=2.0)
    return pred, target, counts


def test_shot_mae_equals_numpy_on_random_samples():
    pred, target, counts = _random_para_shots()
    many, few = 400, 50
    shots = ShotBins.from_counts(counts, bin_width=0.5, many=many, few=few)
    metric = ShotMAE(0.5, PARA_SCALE.to_common, shots.shot_of_bin)
    for start in range(0, 200, 37):  # uneven batches, last one has 15 samples
        metric.update(pred[start : start + 37], target[start : start + 37])
    values = metric.compute()
    ref, bins, shot = _numpy_shot_mae(pred, target, 0.5, 2.0, counts.numpy(), many, few)
    assert {int(code) for code in shot} == {0, 1, 2}  # every region has test samples
    for key, value in values.items():
        assert value.dtype == torch.float32 and value.ndim == 0, key
        assert value.item() == pytest.approx(ref[key], rel=1e-6, abs=1e-6), key
    # nothing dropped, every sample in its numpy bin
    np.testing.assert_array_equal(metric.total.numpy(), np.bincount(bins, minlength=20))
    assert int(metric.total.sum()) == 200


def test_shot_mae_update_does_no_host_sync():
    from sync_check import HostSyncRecorder

    pred, target, counts = _random_para_shots(n=64)
    shots = ShotBins.from_counts(counts, bin_width=0.5, many=400, few=50)
    metric = ShotMAE(0.5, 2.0, shots.shot_of_bin)
    metrics = IAAMetrics(PARA_SCALE, (2.5, 3.5), with_distribution=False, shots=shots)
    with HostSyncRecorder() as rec:
        metric.update(pred, target)
        metric.update(pred[:1], target[:1])
        metrics.metrics["shots"].update(pred, target)
        shot_regions(counts, many=400, few=50)
    assert rec.syncs == []
    # the recorder does see a boolean-mask index (its premise)
    with HostSyncRecorder() as rec:
        _ = target[target > 3.0]
    assert rec.syncs != []


def test_shot_mae_sum_reduced_states_are_exact_across_processes():
    """The DDP path of torchmetrics (gather every state, reduce with ``dist_reduce_fx``) with a
    fake 3-process gather; one process evaluated nothing (an empty batch)."""
    pred, target, counts = _random_para_shots(n=101, seed=11)
    shot_of_bin = shot_regions(counts, many=400, few=50)
    ranks: list[ShotMAE] = []

    def gather(tensor, group=None):  # all_gather: the same state of every rank
        name = "total" if tensor.dtype == torch.long else "sum_abs_error"
        return [getattr(rank, name).clone() for rank in ranks]

    for start, stop in [(0, 51), (51, 101), (101, 101)]:
        rank = ShotMAE(
            0.5, 2.0, shot_of_bin, dist_sync_fn=gather, distributed_available_fn=lambda: True
        )
        for chunk in range(start, stop, 10):
            rank.update(pred[chunk : min(chunk + 10, stop)], target[chunk : min(chunk + 10, stop)])
        if start == stop:
            rank.update(pred[:0], target[:0])
        ranks.append(rank)
    single = ShotMAE(0.5, 2.0, shot_of_bin)
    single.update(pred, target)
    expected = single.compute()
    ref, _, _ = _numpy_shot_mae(pred, target, 0.5, 2.0, counts.numpy(), 400, 50)
    computed = [rank.compute() for rank in ranks]
    for key in expected:
        for values in computed:
            assert values[key] == computed[0][key], key  # every rank: the same synced states
        torch.testing.assert_close(computed[0][key], expected[key], rtol=1e-6, atol=1e-6)
        assert computed[0][key].item() == pytest.approx(ref[key], rel=1e-6, abs=1e-6), key
    # compute restored the local states; merging them by their sum reduction gives the same
    assert int(ranks[0].total.sum()) == 51
    merged = ShotMAE(0.5, 2.0, shot_of_bin)
    for rank in ranks:
        merged.merge_state(rank)
    torch.testing.assert_close(merged.total, single.total, rtol=0, atol=0)
    torch.testing.assert_close(merged.sum_abs_error, single.sum_abs_error)


def test_shot_bins_and_shot_mae_argument_checks():
    shots = ShotBins(2.5, torch.tensor([2, 1, 0, 2]))
    assert shots.shot_of_bin == (2, 1, 0, 2) and shots.num_bins == 4 and shots.bin_width == 2.5
    assert shots == ShotBins(2.5, [2, 1, 0, 2]) and hash(shots) == hash(ShotBins(2.5, (2, 1, 0, 2)))
    with pytest.raises(AttributeError):
        shots.bin_width = 1.0  # frozen
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        ShotBins(2.5, (0, 1, 2))
    with pytest.raises(ValueError, match="codes"):
        ShotBins(2.5, (0, 1, 2, 3))
    with pytest.raises(TypeError, match="integer"):
        ShotBins(2.5, torch.zeros(4))
    with pytest.raises(ValueError, match="bin_width"):
        ShotBins(0.0, ())
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        ShotMAE(5.0, 1.0, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="to_common"):
        ShotMAE(5.0, 0.0, [0, 0])
    metric = ShotMAE(5.0, 1.0, [0, 2])
    with pytest.raises(ValueError, match=r"\(B,\)"):
        metric.update(torch.zeros(3), torch.zeros(2))


def test_iaa_metrics_with_shots_adds_native_scale_keys():
    # PARA: native errors; bins on the common scale (native * 2)
    pred = torch.tensor([1.5, 2.5, 3.0, 4.25])
    target = torch.tensor([1.25, 2.25, 2.5, 4.5])  # common 2.5, 4.5, 5.0, 9.0
    shots = ShotBins(bin_width=2.0, shot_of_bin=(0, 0, 1, 2, 2))
    metrics = IAAMetrics(PARA_SCALE, (2.0, 4.0), with_distribution=False, shots=shots)
    metrics.update(pred, target)
    values = metrics.compute()
    assert set(values) == BASE_KEYS | SHOT_KEYS
    torch.testing.assert_close(values["mae_many"], torch.tensor(0.25))
    torch.testing.assert_close(values["mae_medium"], torch.tensor(0.375))
    torch.testing.assert_close(values["mae_few"], torch.tensor(0.25))
    torch.testing.assert_close(values["mae_balanced"], torch.tensor(0.875 / 3))
    # an empty region is NaN, not an error; reset forgets the samples
    metrics.reset()
    metrics.update(target[:2], target[:2])  # bins 1 and 2 only: no few-shot sample
    values = metrics.compute()
    assert torch.isnan(values["mae_few"]) and values["mae_many"] == 0.0
    # default: no shot keys, no extra submetric, nothing in checkpoints
    plain = IAAMetrics(PARA_SCALE, (2.0, 4.0), with_distribution=False)
    plain.update(pred, target)
    assert set(plain.compute()) == BASE_KEYS and "shots" not in plain.metrics
    assert dict(metrics.state_dict()) == {}
    # the shot states follow .to() and update stays value-free (meta device)
    meta = metrics.to("meta")
    meta.update(torch.empty(8, device="meta"), torch.empty(8, device="meta"))
    assert meta.metrics["shots"].total.device.type == "meta"


def test_iaa_metrics_with_shots_vs_numpy_and_accumulation():
    pred, target, counts = _random_para_shots(n=150, seed=3)
    shots = ShotBins.from_counts(counts, bin_width=0.5, many=400, few=50)
    metrics = IAAMetrics(PARA_SCALE, (2.5, 3.5), with_distribution=False, shots=shots)
    for start in range(0, 150, 64):
        metrics.update(pred[start : start + 64], target[start : start + 64])
    values = metrics.compute()
    ref, _, _ = _numpy_shot_mae(pred, target, 0.5, 2.0, counts.numpy(), 400, 50)
    for name in (*SHOT_NAMES, "balanced"):
        assert values[f"mae_{name}"].item() == pytest.approx(ref[name], rel=1e-6, abs=1e-6), name
    # the other keys are unchanged by the shots
    plain = IAAMetrics(PARA_SCALE, (2.5, 3.5), with_distribution=False)
    plain.update(pred, target)
    for key, value in plain.compute().items():
        torch.testing.assert_close(values[key], value, rtol=1e-5, atol=1e-6, msg=key)
