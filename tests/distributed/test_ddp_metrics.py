"""IAAMetrics and IndexedCollector are exact under 2-process CPU DDP (gloo, Lightning Trainer).

The Trainers run in a subprocess (``ddp_metrics_run.py``): a fresh process per test avoids
EADDRINUSE between DDP Trainers in one pytest process and keeps the fork away from pytest. The
script evaluates 101 samples (odd: rank 0 gets 51, rank 1 gets 50, in 6 and 5 batches) with
``UnrepeatedDistributedSampler``, once on 2 processes (``ddp_fork``) and once on 1 process.
Here we check: every rank evaluated its own disjoint share; after ``compute`` every rank holds
the same metrics and the complete predictions in dataset order; the 2-process metrics equal the
1-process ones and scipy/numpy on the same predictions (float32 precision). That includes the
few-shot keys (``IAAMetrics(shots=...)``): MAE per many / medium / few-shot region of the target
bins and balanced MAE, whose reference here is numpy on bins and shot regions recomputed from the
label counts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from subprocess_env import run_ddp_script

SCRIPT = Path(__file__).with_name("ddp_metrics_run.py")
NUM_SAMPLES = 101
THRESHOLD = 5.0  # AVA_SCALE.threshold, used by the script
KEYS = {
    "srcc",
    "plcc",
    "acc",
    "mae",
    "mse",
    "mae_common",
    "mae_low",
    "mae_mid",
    "mae_high",
    "emd1",
    "emd2",
    "mae_many",
    "mae_medium",
    "mae_few",
    "mae_balanced",
}
SHOT_KEYS = ("mae_many", "mae_medium", "mae_few")  # region codes 0, 1, 2
BIN_EDGE_TOLERANCE = 1e-3  # elta_lightning.metrics.BIN_EDGE_TOLERANCE


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_metrics")
    run_ddp_script(SCRIPT, out)
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _shots(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Bin of every target (AVA: to_common = 1) and shot region of every bin, from the counts of
    the labels (the targets stand in for the training labels) and the shares, in numpy."""
    setup = data["shots"]
    t = np.asarray(data["target_score"], dtype=np.float64)
    width = setup["bin_width"]
    num_bins = round(10 / width)
    bins = np.clip(np.floor(t / width + BIN_EDGE_TOLERANCE), 0, num_bins - 1).astype(int)
    counts = np.bincount(bins, minlength=num_bins)
    many = max(1, math.ceil(setup["many_share"] * len(t)))
    few = min(max(1, math.ceil(setup["few_share"] * len(t))), many)
    shot_of_bin = np.where(counts >= many, 0, np.where(counts < few, 2, 1))
    return bins, shot_of_bin


def _reference(data: dict) -> dict[str, float]:
    """The metrics in float64 numpy / scipy over the whole set."""
    p = np.asarray(data["pred_score"], dtype=np.float64)
    t = np.asarray(data["target_score"], dtype=np.float64)
    pd = np.asarray(data["pred_dist"], dtype=np.float64)
    td = np.asarray(data["target_dist"], dtype=np.float64)
    cut_low, cut_high = data["cuts"]
    low, high = t <= cut_low, t >= cut_high
    mid = ~low & ~high
    err = np.abs(p - t)
    cdf_diff = np.abs(np.cumsum(pd, axis=1) - np.cumsum(td, axis=1))
    bins, shot_of_bin = _shots(data)
    shot = shot_of_bin[bins]
    per_bin = [err[bins == b].mean() for b in np.unique(bins)]
    return {
        "srcc": stats.spearmanr(p, t).statistic,
        "plcc": stats.pearsonr(p, t).statistic,
        "acc": np.mean((p > THRESHOLD) == (t > THRESHOLD)),
        "mae": err.mean(),
        "mse": np.mean((p - t) ** 2),
        "mae_common": err.mean(),  # AVA: to_common = 1
        "mae_low": err[low].mean(),
        "mae_mid": err[mid].mean(),
        "mae_high": err[high].mean(),
        "emd1": np.mean(cdf_diff, axis=1).mean(),
        "emd2": np.sqrt(np.mean(cdf_diff**2, axis=1)).mean(),
        **{key: err[shot == code].mean() for code, key in enumerate(SHOT_KEYS)},
        "mae_balanced": np.mean(per_bin),
    }


def test_data_exercises_ties_and_boundaries(ddp_results: Path):
    data = _load(ddp_results / "data.json")
    p, t = np.asarray(data["pred_score"]), np.asarray(data["target_score"])
    assert len(t) == NUM_SAMPLES
    assert len(np.unique(t)) < NUM_SAMPLES / 4 and len(np.unique(p)) < NUM_SAMPLES / 2  # ties
    assert (t == THRESHOLD).any() and (p == THRESHOLD).any()  # scores exactly at the threshold
    assert (t == data["cuts"][0]).any() and (t == data["cuts"][1]).any()  # targets on the cuts
    assert 0.6 < np.mean((p > THRESHOLD) == (t > THRESHOLD)) < 0.95  # accuracy is not trivial


def test_every_shot_region_has_samples_on_both_ranks(ddp_results: Path):
    data = _load(ddp_results / "data.json")
    bins, shot_of_bin = _shots(data)
    assert data["shots"]["shot_of_bin"] == shot_of_bin.tolist()  # the script's LabelStats agrees
    shot = shot_of_bin[bins]
    ranks = [_load(ddp_results / "ddp2" / f"rank{r}.json") for r in (0, 1)]
    for code, key in enumerate(SHOT_KEYS):
        for rank in ranks:  # every region's sums are split between the ranks
            assert (shot[rank["seen"]] == code).any(), (key, rank["global_rank"])
    t = np.asarray(data["target_score"])
    err = np.abs(np.asarray(data["pred_score"]) - t)
    balanced = np.mean([err[bins == b].mean() for b in np.unique(bins)])
    assert abs(balanced - err.mean()) > 1e-3  # balanced MAE is not the plain MAE here


def test_each_rank_evaluated_a_disjoint_share(ddp_results: Path):
    ranks = [_load(ddp_results / "ddp2" / f"rank{r}.json") for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [r["global_rank"] for r in ranks] == [0, 1]
    seen0, seen1 = ranks[0]["seen"], ranks[1]["seen"]
    assert (len(seen0), len(seen1)) == (51, 50)  # uneven: no padding duplicates
    assert sorted(seen0 + seen1) == list(range(NUM_SAMPLES))
    single = _load(ddp_results / "single" / "rank0.json")
    assert single["world_size"] == 1 and sorted(single["seen"]) == list(range(NUM_SAMPLES))


@pytest.mark.parametrize("rank", [0, 1])
def test_collector_holds_every_index_once_in_order_on_every_rank(ddp_results: Path, rank: int):
    data = _load(ddp_results / "data.json")
    collected = _load(ddp_results / "ddp2" / f"rank{rank}.json")["collector"]
    assert collected["index"] == list(range(NUM_SAMPLES))
    np.testing.assert_allclose(collected["pred"], data["pred_score"], rtol=0, atol=0)
    np.testing.assert_allclose(collected["target"], data["target_score"], rtol=0, atol=0)


def test_ddp_metrics_equal_single_process_and_scipy(ddp_results: Path):
    data = _load(ddp_results / "data.json")
    rank0 = _load(ddp_results / "ddp2" / "rank0.json")["metrics"]
    rank1 = _load(ddp_results / "ddp2" / "rank1.json")["metrics"]
    single = _load(ddp_results / "single" / "rank0.json")["metrics"]
    reference = _reference(data)
    assert set(rank0) == KEYS and set(single) == KEYS
    for key in sorted(KEYS):
        assert np.isfinite(rank0[key]), key
        assert rank1[key] == rank0[key], key  # both ranks compute from the same synced states
        assert rank0[key] == pytest.approx(single[key], rel=1e-6, abs=1e-6), key
        assert rank0[key] == pytest.approx(reference[key], rel=1e-6, abs=2e-6), key


def test_logged_metrics_reach_the_launching_process(ddp_results: Path):
    rank0 = _load(ddp_results / "ddp2" / "rank0.json")["metrics"]
    logged = _load(ddp_results / "ddp2" / "main.json")["callback_metrics"]
    assert logged == pytest.approx({f"test/{k}": v for k, v in rank0.items()}, rel=1e-7)
