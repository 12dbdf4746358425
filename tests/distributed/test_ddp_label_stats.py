"""Label statistics are the same on every DDP process: those of the whole training split.

``ddp_label_stats_run.py`` (a subprocess) forks 2 processes in one gloo group; each builds the
tiny synthetic data module and the IAAModule as a rank of ``elta train`` does before its Trainer
starts (``run.build_module`` -> ``LabelStats.from_scores`` of the training labels), and the
ranks all-gather what their modules hold. Here we check that rank 0 found every rank's
statistics identical (and compare the ranks' own files again), that they are the statistics of
all training labels (recomputed in numpy from the generated ``train.csv``), and that the data
tell a shard from the whole split: a rank's share of the labels gives other statistics, so the
equality checks fail if statistics ever come from a rank's shard.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from subprocess_env import run_ddp_script

SCRIPT = Path(__file__).with_name("ddp_label_stats_run.py")
WORLD = 2
NUM_TRAIN = 96  # tiny_runs.tiny_run_overrides: data.synthetic.num_train
SHARED_KEYS = ("label_stats", "cuts", "shot_of_bin", "num_train_rows", "folder")
BIN_EDGE_TOLERANCE = 1e-3  # elta_lightning.metrics.BIN_EDGE_TOLERANCE


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_label_stats")
    run_ddp_script(SCRIPT, out)
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _ranks(out: Path) -> list[dict]:
    reports = [_load(out / f"rank{r}.json") for r in range(WORLD)]
    assert [r["rank"] for r in reports] == list(range(WORLD))
    assert all(r["world_size"] == WORLD for r in reports)
    return reports


def _train_scores(folder: Path) -> np.ndarray:
    """Mean scores (ratings 1..10) of the training split's AVA CSV, as the reader's float32."""
    with (folder / "train.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    votes = np.array([[float(row[f"score{k}"]) for k in range(2, 12)] for row in rows])
    means = votes @ np.arange(1, 11) / votes.sum(axis=1)
    return means.astype(np.float32).astype(np.float64)


def test_rank_zero_found_the_statistics_identical_on_every_rank(ddp_results: Path):
    verdict = _load(ddp_results / "gathered.json")
    assert [g["rank"] for g in verdict["gathered"]] == list(range(WORLD))
    assert verdict["identical"] == {key: True for key in SHARED_KEYS}
    ranks = _ranks(ddp_results)
    assert verdict["gathered"] == ranks  # what was gathered is what each rank wrote
    for key in SHARED_KEYS:
        assert ranks[1][key] == ranks[0][key], key  # exact: counts, cut floats, shot codes


def test_statistics_are_those_of_the_whole_training_split(ddp_results: Path):
    report = _ranks(ddp_results)[0]
    stats = report["label_stats"]
    scores = _train_scores(Path(report["folder"]))
    assert len(scores) == NUM_TRAIN == report["num_train_rows"] == sum(stats["counts"])
    width = stats["bin_width"]
    num_bins = round(10 / width)
    assert len(stats["counts"]) == num_bins
    bins = np.clip(np.floor(scores * (1.0 / width) + BIN_EDGE_TOLERANCE), 0, num_bins - 1)
    counts = np.bincount(bins.astype(int), minlength=num_bins)
    assert stats["counts"] == counts.tolist()  # AVA scale: to_common = 1
    cuts = np.quantile(scores, [0.2, 0.8])  # linear interpolation, as torch.quantile
    np.testing.assert_allclose(stats["cuts"], cuts, rtol=1e-12, atol=0)
    assert report["cuts"] == stats["cuts"]  # the test metrics' regions
    many = max(1, math.ceil(stats["many_share"] * NUM_TRAIN))
    few = min(max(1, math.ceil(stats["few_share"] * NUM_TRAIN)), many)
    shots = np.where(counts >= many, 0, np.where(counts < few, 2, 1))
    assert report["shot_of_bin"] == shots.tolist()  # the test metrics' shot regions
    assert set(shots.tolist()) == {0, 1, 2}


def test_a_rank_share_of_the_labels_gives_other_statistics(ddp_results: Path):
    ranks = _ranks(ddp_results)
    whole = ranks[0]["label_stats"]
    shards = [r["shard_label_stats"] for r in ranks]
    assert [sum(s["counts"]) for s in shards] == [NUM_TRAIN // WORLD] * WORLD
    assert shards[0]["counts"] != shards[1]["counts"]
    assert shards[0]["cuts"] != shards[1]["cuts"]
    assert all(shard["cuts"] != whole["cuts"] for shard in shards)
