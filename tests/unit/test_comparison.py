"""Unit tests of elta_lightning.comparison: the statistics against hand-worked values and scipy,
and `compare_runs` on hand-written run folders (no training)."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from elta_lightning.comparison import compare_runs
from elta_lightning.comparison.metric_rows import BOOTSTRAPPED
from elta_lightning.comparison.runs import differing_keys, flat_config
from elta_lightning.comparison.statistics import (
    BLOCK,
    Difference,
    EvaluationSet,
    bootstrap_metrics,
    mean_std,
    paired_difference,
    percentile_interval,
    prediction_metrics,
    resample_counts,
    weighted_pearson,
    weighted_ranks,
)
from elta_lightning.comparison.tables import difference_cell, mean_std_cell
from elta_lightning.errors import EltaError


# --------------------------------------------------------------------------------------------
# mean ± std
# --------------------------------------------------------------------------------------------
def test_mean_std_by_hand() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)  # sample std: sqrt((1 + 0 + 1) / 2)
    mean, std, count = mean_std([None, 4.0, math.nan, 6.0])  # undefined values left out
    assert (mean, count) == (5.0, 2) and std == pytest.approx(math.sqrt(2.0))
    mean, std, count = mean_std([7.0])
    assert (mean, count) == (7.0, 1) and math.isnan(std)  # one seed: no spread to measure
    assert mean_std([None])[2] == 0 and math.isnan(mean_std([])[0])


def test_cells() -> None:
    assert mean_std_cell([1.0, 2.0, 3.0], 4) == "2.0000 ± 1.0000"
    assert mean_std_cell([7.0], 2) == "7.00"
    assert mean_std_cell([None], 4) == "–"
    noise = Difference(0.01, -0.005, 0.02, 2000)
    assert noise.contains_zero and difference_cell(noise, 4) == "≈ +0.0100 [-0.0050, +0.0200]"
    real = Difference(0.03, 0.01, 0.05, 2000)
    assert not real.contains_zero and difference_cell(real, 4) == "+0.0300 [+0.0100, +0.0500]"
    assert difference_cell(None, 4) == "–"
    assert difference_cell(Difference(math.nan, math.nan, math.nan, 0), 4) == "–"


# --------------------------------------------------------------------------------------------
# Ranks, correlations and the metrics of weighted (resampled) test sets
# --------------------------------------------------------------------------------------------
def test_weighted_ranks_by_hand() -> None:
    values = np.array([3.0, 1.0, 3.0, 2.0])
    weights = np.array([[1, 1, 1, 1], [2, 0, 1, 1]], dtype=float)
    ranks = weighted_ranks(values, weights)
    # all once: 1 -> 1, 2 -> 2, the two 3s share (3 + 4) / 2
    np.testing.assert_array_equal(ranks[0], [3.5, 1.0, 3.5, 2.0])
    # resample {3, 3, 3, 2} (image 0 twice, image 1 not drawn): 2 -> 1, the 3s share (2+3+4)/3
    np.testing.assert_array_equal(ranks[1, [0, 2, 3]], [3.0, 3.0, 1.0])
    np.testing.assert_array_equal(ranks[0], stats.rankdata(values))


def test_weighted_pearson_by_hand() -> None:
    x, y = np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])
    # once each: cov 1, variances 2 and 2 -> 0.5; with image 0 twice: 1.75 / 2.75 = 7 / 11
    values = weighted_pearson(x, y, np.array([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]]))
    np.testing.assert_allclose(values, [0.5, 7.0 / 11.0])
    assert np.isnan(weighted_pearson(x, np.ones(3), np.ones((1, 3)))).all()  # constant: NaN


def tiny_test_set() -> EvaluationSet:
    return EvaluationSet(
        true=np.array([1.0, 2.0, 3.0, 4.0]),
        bins=np.array([0, 1, 1, 2]),
        regions=np.array(["low", "mid", "mid", "high"]),
        shots=np.array(["few", "many", "many", "medium"]),
        threshold=2.5,
    )


def test_prediction_metrics_by_hand() -> None:
    values = prediction_metrics(tiny_test_set(), np.array([[2.0, 2.0, 5.0, 4.0]]), np.ones((1, 4)))
    got = {key: float(value[0, 0]) for key, value in values.items()}
    # |errors| 1, 0, 2, 0; predicted ranks 1.5, 1.5, 4, 3 against 1, 2, 3, 4:
    # cov 3.5, variances 5 and 4.5 -> SRCC 3.5 / sqrt(22.5)
    assert got["test/srcc"] == pytest.approx(3.5 / math.sqrt(22.5))
    assert got["test/plcc"] == pytest.approx(stats.pearsonr([1, 2, 3, 4], [2, 2, 5, 4])[0])
    assert got["test/acc"] == 1.0  # high (> 2.5) for the last two, in both
    assert got["test/mae"] == 0.75
    assert (got["test/mae_low"], got["test/mae_mid"], got["test/mae_high"]) == (1.0, 1.0, 0.0)
    assert (got["test/mae_few"], got["test/mae_many"], got["test/mae_medium"]) == (1.0, 1.0, 0.0)
    assert got["test/mae_balanced"] == pytest.approx(2.0 / 3.0)  # bins: 1, (0 + 2) / 2, 0
    assert set(got) == set(BOOTSTRAPPED)


def test_prediction_metrics_of_counts_equal_those_of_the_resampled_arrays() -> None:
    """An image drawn k times counts k times: the same values as on the explicit resample."""
    rng = np.random.default_rng(3)
    true = np.round(rng.uniform(2.0, 8.0, 30), 1)  # rounded: tied true scores
    test = EvaluationSet(
        true=true,
        bins=np.floor(true).astype(int),
        regions=np.where(true < 4.0, "low", np.where(true >= 6.5, "high", "mid")),
        shots=np.where(true < 3.0, "few", np.where(true < 5.0, "medium", "many")),
        threshold=5.0,
    )
    predicted = np.round(true + rng.normal(0.0, 1.0, (2, 30)), 1)
    counts = next(resample_counts(30, 5, rng))
    values = prediction_metrics(test, predicted, counts)
    for b in range(5):
        index = np.repeat(np.arange(30), counts[b])
        t, region, shot = test.true[index], test.regions[index], test.shots[index]
        bins = test.bins[index]
        for k in range(2):
            p = predicted[k, index]
            error = np.abs(p - t)
            expected = {
                "test/srcc": stats.spearmanr(t, p).statistic,
                "test/plcc": stats.pearsonr(t, p).statistic,
                "test/acc": np.mean((p > 5.0) == (t > 5.0)),
                "test/mae": error.mean(),
                "test/mae_balanced": np.mean([error[bins == c].mean() for c in np.unique(bins)]),
                **{f"test/mae_{r}": error[region == r].mean() for r in ("low", "mid", "high")},
                **{f"test/mae_{s}": error[shot == s].mean() for s in ("many", "medium", "few")},
            }
            for key, value in expected.items():
                assert values[key][k, b] == pytest.approx(value, abs=1e-12), key


# --------------------------------------------------------------------------------------------
# The paired bootstrap
# --------------------------------------------------------------------------------------------
def test_resample_counts_are_the_rows_of_one_index_matrix() -> None:
    resamples, images = BLOCK + 10, 7  # two blocks
    blocks = list(resample_counts(images, resamples, np.random.default_rng(5)))
    assert [len(b) for b in blocks] == [BLOCK, 10]
    index = np.random.default_rng(5).integers(0, images, size=(resamples, images))
    expected = np.stack([np.bincount(row, minlength=images) for row in index])
    np.testing.assert_array_equal(np.concatenate(blocks), expected)


def test_percentile_interval_and_paired_difference() -> None:
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5, 101))
    assert percentile_interval(np.r_[np.arange(101.0), np.nan]) == pytest.approx((2.5, 97.5, 101))
    low, high, defined = percentile_interval(np.full(4, np.nan))
    assert math.isnan(low) and math.isnan(high) and defined == 0
    method, reference = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_array_equal(paired_difference(method, reference), [1.5, 2.5])


def test_identical_predictions_give_the_interval_zero_zero() -> None:
    test = tiny_test_set()
    predicted = np.array([[2.0, 2.0, 5.0, 4.0]] * 2)
    samples = bootstrap_metrics(test, predicted, 300, seed=0)
    for key in BOOTSTRAPPED:
        difference = paired_difference(samples[key][:1], samples[key][1:])
        low, high, _ = percentile_interval(difference)
        assert (low, high) == (0.0, 0.0), key


def test_constant_error_shift_gives_the_exact_mae_difference_pooled_over_seeds() -> None:
    """Reference off by +1 in both seeds; the method off by 0.5 (seed 1) and 0 (seed 2): in every
    resample its MAE is lower by mean(0.5, 1) = 0.75, and the ranks do not change."""
    rng = np.random.default_rng(1)
    true = rng.uniform(2.0, 8.0, 50)
    test = EvaluationSet(
        true, np.floor(true).astype(int), np.full(50, "mid"), np.full(50, "many"), 5
    )
    predicted = np.stack([true + 1.0, true + 1.0, true + 0.5, true])  # ref s1, s2; method s1, s2
    samples = bootstrap_metrics(test, predicted, 500, seed=2)
    mae = paired_difference(samples["test/mae"][2:], samples["test/mae"][:2])
    np.testing.assert_allclose(mae, -0.75, atol=1e-12)
    srcc = paired_difference(samples["test/srcc"][2:], samples["test/srcc"][:2])
    np.testing.assert_array_equal(srcc, 0.0)


def test_bootstrap_is_repeatable_and_depends_on_its_seed() -> None:
    test, rng = tiny_test_set(), np.random.default_rng(0)
    predicted = test.true + rng.normal(0.0, 1.0, (2, 4))
    first = bootstrap_metrics(test, predicted, 50, seed=4)["test/mae"]
    np.testing.assert_array_equal(first, bootstrap_metrics(test, predicted, 50, 4)["test/mae"])
    assert not np.array_equal(first, bootstrap_metrics(test, predicted, 50, 5)["test/mae"])


# --------------------------------------------------------------------------------------------
# Which runs may be compared
# --------------------------------------------------------------------------------------------
def test_differing_keys_leave_out_the_ignored_ones() -> None:
    base = {"seed": 1, "optim": {"lr": 0.1}, "method": {"name": "a"}, "logger": {"tags": []}}
    other = {"seed": 2, "optim": {"lr": 0.2}, "method": {"name": "b"}, "logger": {"tags": ["x"]}}
    flat = [flat_config(base), flat_config(other)]
    assert flat[0] == {"seed": 1, "optim.lr": 0.1, "method.name": "a", "logger.tags": []}
    assert differing_keys(flat, ("seed", "method", "logger")) == ["optim.lr"]
    assert differing_keys(flat, ("seed", "method", "logger", "optim.lr")) == []
    assert differing_keys([{"a.b": 1}, {}], ()) == ["a.b"]  # a missing key differs


# --------------------------------------------------------------------------------------------
# compare_runs on hand-written run folders
# --------------------------------------------------------------------------------------------
TRUE = np.linspace(3.0, 8.0, 12)


def write_run(
    root: Path,
    method: str,
    seed: int,
    offset: float,
    *,
    lr: float = 0.1,
    finished: bool = True,
    images: int = 12,
    name: str = "",
) -> Path:
    """A run folder as `elta train` writes it: predictions = true score + offset."""
    folder = root / method / f"run-{method}-{seed}-{lr}{name}"
    folder.mkdir(parents=True)
    config = {
        "seed": seed,
        "runs_dir": str(root),
        "run_id": None,
        "data": {"name": "synthetic", "batch_size": 4, "num_workers": seed},
        "optim": {"lr": lr},
        "method": {"name": method, "parts": []},
        "logger": {"tags": [method, f"seed{seed}"]},
    }
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    true = TRUE[:images]
    with (folder / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "true_score", "predicted_score", "bin", "region", "shot"])
        for i, t in enumerate(true):
            region = "low" if t < 4.0 else "high" if t > 7.0 else "mid"
            shot = "many" if 4.0 <= t <= 7.0 else "few"
            writer.writerow([f"img{i:02d}", t, t + offset, int(t * 10), region, shot])
    notes = {"label_stats": {"counts": [i % 5 for i in range(100)]}}
    (folder / "run_notes.json").write_text(json.dumps(notes))
    if finished:
        metrics = {"test/srcc": 1.0, "test/mae": abs(offset), "test/emd2": None}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def two_methods(tmp_path: Path) -> Path:
    for seed in (1, 2):
        write_run(tmp_path / "runs", "vanilla", seed, 1.0)
        write_run(tmp_path / "runs", "elta", seed, 0.5)
    return tmp_path / "runs"


def test_compare_runs_writes_the_report(two_methods: Path, tmp_path: Path) -> None:
    report = compare_runs([str(two_methods / "*" / "*")], out=str(tmp_path / "out"), resamples=200)
    names = {"report.md", "results.csv", "tail_mae.png", "per_bin_mae.png"}
    names |= {"predicted_vs_true.png", "histograms.png"}
    assert {p.name for p in (tmp_path / "out").iterdir()} == names
    mae = report.groups[0].differences["elta"]["test/mae"]
    assert (mae.estimate, mae.low, mae.high) == pytest.approx((-0.5, -0.5, -0.5))
    assert not mae.contains_zero
    assert report.groups[0].differences["elta"]["test/srcc"].contains_zero  # same ranks: ≈
    with (tmp_path / "out" / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["row"], r["method"]) for r in rows] == [
        ("run", "vanilla"),
        ("run", "vanilla"),
        ("run", "elta"),
        ("run", "elta"),
        ("method", "vanilla"),
        ("method", "elta"),
    ]
    assert float(rows[-1]["test/mae_diff"]) == pytest.approx(-0.5)
    text = (tmp_path / "out" / "report.md").read_text()
    assert "200 resamples" in text and "default_rng(0)" in text and "≈" in text
    assert "EMD" not in report.summary()  # undefined in every run: no row
    assert str(tmp_path / "out" / "report.md") in report.summary()


def test_unfinished_runs_are_skipped_with_a_note(two_methods: Path, tmp_path: Path, caplog) -> None:
    unfinished = write_run(two_methods, "elta", 3, 0.0, finished=False)
    with caplog.at_level(logging.WARNING):
        report = compare_runs([str(two_methods / "*" / "*")], resamples=50)
    assert report.skipped == [unfinished.resolve()]
    assert str(unfinished) in caplog.text
    assert str(unfinished) in report.markdown.read_text()
    # by default next to the method folders, where the same glob does not pick it up again
    assert report.out.parent == two_methods.resolve() and report.out.name.startswith("compare-")
    assert compare_runs([str(two_methods / "*" / "*")], out=str(tmp_path / "again")).skipped
    with pytest.raises(EltaError, match="none of the 1 run folders has finished"):
        compare_runs([str(unfinished)])


def test_runs_differing_in_a_key_are_refused_or_grouped(two_methods: Path, tmp_path: Path) -> None:
    write_run(two_methods, "vanilla", 1, 1.0, lr=0.3)
    pattern = str(two_methods / "*" / "*")
    with pytest.raises(EltaError, match=r"differ in optim\.lr") as caught:
        compare_runs([pattern], out=str(tmp_path / "out"))
    assert "0.3 in" in str(caught.value) and "--group-by optim.lr" in str(caught.value)
    report = compare_runs([pattern], out=str(tmp_path / "out"), group_by=["optim.lr"])
    assert [g.label for g in report.groups] == ["optim.lr=0.1", "optim.lr=0.3"]
    assert (tmp_path / "out" / "optim.lr=0.3_tail_mae.png").is_file()
    with pytest.raises(EltaError, match="no run has this config key"):
        compare_runs([pattern], group_by=["optim.nope"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no match", "no run folder matched"),
        ("no config", "has no config.yaml"),
        ("no reference", "reference method 'nope' is not among"),
        ("other images", "tested on different images"),
        ("same seed twice", "two finished runs of method 'elta' with seed 1"),
        ("method settings", r"runs of method 'elta' differ in method\.parts"),
    ],
)
def test_clear_errors(two_methods: Path, change: str, message: str) -> None:
    patterns, reference = [str(two_methods / "*" / "*")], "vanilla"
    if change == "no match":
        patterns = [str(two_methods / "missing-*")]
    elif change == "no config":
        (two_methods / "elta" / "not-a-run").mkdir()
    elif change == "no reference":
        reference = "nope"
    elif change == "other images":
        write_run(two_methods, "elta", 3, 0.5, images=11)
    elif change == "same seed twice":
        write_run(two_methods, "elta", 1, 0.5, name="-again")
    elif change == "method settings":
        config = two_methods / "elta" / "run-elta-2-0.1" / "config.yaml"
        config.write_text(config.read_text().replace("parts: []", "parts: [tfa]"))
    with pytest.raises(EltaError, match=message):
        compare_runs(patterns, reference=reference)
