"""`elta compare` on real run folders: two methods x two seeds of tiny training runs, plus one
run with another learning rate (refused, or split with --group-by)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import tiny_run_overrides

from elta_lightning.cli import main
from elta_lightning.comparison import compare_runs
from elta_lightning.comparison.group import evaluation_set
from elta_lightning.comparison.metric_rows import BOOTSTRAPPED
from elta_lightning.comparison.plots import PLOT_FILES
from elta_lightning.comparison.runs import read_run
from elta_lightning.comparison.statistics import prediction_metrics
from elta_lightning.config import load_config
from elta_lightning.errors import EltaError
from elta_lightning.run import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, synthetic_cache: Path) -> Path:
    """runs/: vanilla and elta, seeds 1 and 2; runs-lr/: vanilla seed 1 with optim.lr=0.01
    (the tiny settings of ``tiny_overrides``, one epoch)."""
    root = tmp_path_factory.mktemp("compare")
    for method, seed, folder, extra in [
        ("vanilla", 1, "runs", []),
        ("vanilla", 2, "runs", []),
        ("elta", 1, "runs", []),
        ("elta", 2, "runs", []),
        ("vanilla", 1, "runs-lr", ["optim.lr=0.01"]),
    ]:
        overrides = tiny_run_overrides(synthetic_cache, root / folder)
        train(
            load_config(
                [*overrides, f"method={method}", f"seed={seed}", "trainer.max_epochs=1", *extra]
            )
        )
    return root


def test_metrics_from_predictions_equal_the_runs_own(runs: Path) -> None:
    for folder in sorted((runs / "runs" / "synthetic").glob("*/*")):
        run = read_run(folder)
        predicted = run.predictions["predicted"][None]
        values = prediction_metrics(evaluation_set([run]), predicted, np.ones((1, predicted.size)))
        assert abs(values["test/srcc"][0, 0] - run.metrics["test/srcc"]) < 1e-6
        for key in BOOTSTRAPPED:
            if run.metrics[key] is not None:
                assert values[key][0, 0] == pytest.approx(run.metrics[key], abs=1e-5), key


def test_report_of_two_methods_and_two_seeds(runs: Path, tmp_path: Path) -> None:
    report = compare_runs([str(runs / "runs" / "synthetic" / "*" / "*")], out=str(tmp_path))
    for name in ("report.md", "results.csv", *PLOT_FILES):
        assert (tmp_path / name).stat().st_size > 0, name
    with (tmp_path / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((r["row"], r["method"]) for r in rows) == [
        ("method", "elta"),
        ("method", "vanilla"),
        ("run", "elta"),
        ("run", "elta"),
        ("run", "vanilla"),
        ("run", "vanilla"),
    ]
    elta = next(r for r in rows if r["row"] == "method" and r["method"] == "elta")
    low, high = float(elta["test/srcc_diff_low"]), float(elta["test/srcc_diff_high"])
    assert low <= float(elta["test/srcc_diff"]) <= high
    text = (tmp_path / "report.md").read_text()
    assert "Δ elta − vanilla" in text and "2000 resamples" in text
    assert "time per epoch" in text and "peak memory" in text
    assert report.summary().startswith(f"== comparison: {tmp_path / 'report.md'}")


def test_a_run_with_another_learning_rate_is_refused_or_grouped(runs: Path, tmp_path: Path) -> None:
    patterns = [str(runs / folder / "synthetic" / "*" / "*") for folder in ("runs", "runs-lr")]
    with pytest.raises(EltaError, match=r"differ in optim\.lr") as caught:
        compare_runs(patterns, out=str(tmp_path))
    assert "0.01 in" in str(caught.value)
    report = compare_runs(patterns, out=str(tmp_path), group_by=["optim.lr"], resamples=200)
    assert [(g.label, g.methods) for g in report.groups] == [
        ("optim.lr=0.002", ["vanilla", "elta"]),
        ("optim.lr=0.01", ["vanilla"]),
    ]
    assert (tmp_path / "optim.lr=0.01_histograms.png").stat().st_size > 0


def test_the_command_line(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pattern = str(runs / "runs" / "synthetic" / "*" / "*")
    assert main(["compare", pattern, "--out", str(tmp_path), "--resamples", "100"]) == 0
    shown = capsys.readouterr().out
    assert "| SRCC ↑ |" in shown and "100 resamples" in shown
    assert main(["compare", str(runs / "nothing-*")]) == 1
    assert "no run folder matched" in capsys.readouterr().err
    assert main(["compare", pattern, "--reference", "lds"]) == 1
    assert "reference method 'lds'" in capsys.readouterr().err
