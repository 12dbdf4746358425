"""A whole ``run.train`` on each of the four datasets, in its native and its ELTA CSV layout.

Tiny copies with real JPEGs (``tests/data/tiny_datasets.py``) go through ``load_config`` with
``dataset=<name> data.root=<copy>``, the DataModule's layout detection, a real Lightning Trainer
(two epochs of a few steps), checkpoint selection and the test of the best checkpoint. Checked:
the run folder (metrics.json with the metrics the data allows, predictions.csv with one row per
test image and its true label), the head the run picked (distribution where the labels have vote
distributions, score otherwise) and the split warnings of the datasets with known defects.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import sys
from pathlib import Path

import pytest

TINY_DATASETS_DIR = str(Path(__file__).resolve().parents[1] / "data")
if TINY_DATASETS_DIR not in sys.path:  # appended: never shadows another folder's conftest
    sys.path.append(TINY_DATASETS_DIR)
from tiny_datasets import TinyDataset, build_tiny_dataset  # noqa: E402
from tiny_runs import TINY_TRAINING  # noqa: E402

from elta_lightning.checkpoints import load_checkpoint  # noqa: E402
from elta_lightning.config import load_config  # noqa: E402
from elta_lightning.run import train  # noqa: E402

DATASETS = ("ava", "aadb", "tad66k", "para")
LAYOUTS = ("native", "elta_csv")

#: Whether the labels of (dataset, layout) carry vote distributions: AVA in both layouts, PARA
#: in its native GIAA files only (its ELTA CSV keeps the mean score), AADB and TAD66K never.
HAS_VOTES = {
    ("ava", "native"): True,
    ("ava", "elta_csv"): True,
    ("aadb", "native"): False,
    ("aadb", "elta_csv"): False,
    ("tad66k", "native"): False,
    ("tad66k", "elta_csv"): False,
    ("para", "native"): True,
    ("para", "elta_csv"): False,
}

#: Split defects each run must warn about: (dataset, layout) -> words of the warning.
SPLIT_WARNINGS = {
    ("aadb", "native"): "validation and test splits share 1 images",
    ("aadb", "elta_csv"): "validation and test splits share 1 images",
    ("tad66k", "elta_csv"): "the validation split is the test split (6 images)",
}

TEST_METRICS = ("srcc", "plcc", "acc", "mae", "mae_low", "mae_mid", "mae_high")


def dataset_overrides(tiny: TinyDataset, runs_dir: Path) -> list[str]:
    """A tiny run on a real data set's tiny copy: batch 4 and a 20 % carve-out, so every train
    split has >= 12 rows (>= 3 full batches) and every validation split >= 3 rows."""
    return [
        f"dataset={tiny.name}",
        f"data.root={tiny.root}",
        f"runs_dir={runs_dir}",
        "run_id=tiny",
        "data.batch_size=4",
        "data.val_fraction=0.2",
        *TINY_TRAINING,
    ]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", DATASETS)
def test_train_run_on_tiny_dataset(
    name: str, layout: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tiny = build_tiny_dataset(name, tmp_path / name, layout)
    cfg = load_config(dataset_overrides(tiny, tmp_path / "runs"))
    assert cfg.data.name == name and cfg.data.root == str(tiny.root)

    with caplog.at_level(logging.WARNING, logger="elta_lightning"):
        result = train(cfg)

    run_dir = result.run_dir
    assert run_dir == tmp_path / "runs" / name / "vanilla" / "tiny"
    assert (run_dir / "config.yaml").is_file()

    # metrics.json: the test metrics of every dataset, EMD only where the labels have votes
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # a tail region of a tiny test split may be empty: NaN in memory, null in strict JSON
    assert metrics.keys() == result.metrics.keys()
    for key, value in result.metrics.items():
        assert metrics[key] == (None if math.isnan(value) else pytest.approx(value)), key
    for key in TEST_METRICS:
        assert f"test/{key}" in metrics, key
    for key in ("srcc", "plcc", "acc", "mae"):
        assert math.isfinite(metrics[f"test/{key}"]), key
    votes = HAS_VOTES[name, layout]
    assert ("test/emd1" in metrics) == votes and ("test/emd2" in metrics) == votes
    if votes:
        assert math.isfinite(metrics["test/emd1"]) and math.isfinite(metrics["test/emd2"])

    # predictions.csv: exactly one row per test image, with its label on the dataset's scale
    with (run_dir / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == tiny.rows["test"] == len(tiny.test_labels)
    assert sorted(r["image_id"] for r in rows) == sorted(tiny.test_labels)
    for row in rows:
        expected = tiny.test_labels[row["image_id"]]
        assert float(row["true_score"]) == pytest.approx(expected, abs=1e-5), row["image_id"]
        assert math.isfinite(float(row["predicted_score"]))

    # the head: distribution where the labels have vote distributions, score otherwise
    module = load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    assert module.head_kind == ("distribution" if votes else "score")

    # the known split defects are reported
    warnings = " ".join(
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("elta_lightning")
    )
    if (name, layout) in SPLIT_WARNINGS:
        assert SPLIT_WARNINGS[name, layout] in warnings
    else:
        assert "split" not in warnings.replace("data.val_split", "")


def test_carved_validation_removes_the_tad66k_elta_val_is_test_defect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``data.val_split=carve``: validation carved from train.csv, val.csv (= test.csv) unused."""
    tiny = build_tiny_dataset("tad66k", tmp_path / "tad66k", "elta_csv")
    overrides = [*dataset_overrides(tiny, tmp_path / "runs"), "data.val_split=carve"]
    with caplog.at_level(logging.INFO, logger="elta_lightning"):
        result = train(load_config(overrides))
    assert "validation = 3 rows carved from train (data.val_split=carve" in caplog.text
    assert "the validation split is the test split" not in caplog.text
    assert math.isfinite(result.metrics["test/srcc"])
    with (result.run_dir / "predictions.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == tiny.rows["test"]


def test_prepared_index_leaves_out_a_broken_test_image(tmp_path: Path) -> None:
    """AVA's archive has truncated files: ``prepare_dataset`` (``elta prepare``) finds them once,
    and a run with ``data.prepared`` + ``data.skip_missing_images`` tests on the others only."""
    from omegaconf import OmegaConf

    from elta_lightning.datamodules import build_datamodule
    from elta_lightning.datamodules.prepare import prepare_dataset

    tiny = build_tiny_dataset("ava", tmp_path / "ava")
    broken = sorted(tiny.test_labels)[0]
    jpeg = (tiny.root / "images" / broken).read_bytes()
    (tiny.root / "images" / broken).write_bytes(jpeg[: len(jpeg) // 2])  # truncated
    overrides = dataset_overrides(tiny, tmp_path / "runs")
    datamodule = build_datamodule(OmegaConf.to_object(load_config(overrides).data))
    report = prepare_dataset(datamodule, tmp_path / "prepared", resize=40)
    assert report.images == {"ok": 19, "unreadable": 1}

    prepared = [f"data.prepared={tmp_path / 'prepared'}", "data.skip_missing_images=true"]
    result = train(load_config([*overrides, *prepared]))
    with (result.run_dir / "predictions.csv").open(newline="") as handle:
        ids = sorted(r["image_id"] for r in csv.DictReader(handle))
    assert ids == sorted(set(tiny.test_labels) - {broken})
    assert math.isfinite(result.metrics["test/srcc"])
