"""Every reader against the real label files (../shared/data/labels; skipped where absent).

Row counts, score ranges and statistics, distribution sums and split disjointness are checked
against the figures in the datasets' papers and in shared/reference/datasets.md.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from tiny_datasets import real_labels, small_config

from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.ava import read_ava_csv
from elta_lightning.datamodules.base import check_labels, split_overlap_warnings
from elta_lightning.datamodules.labels import LabelTable


def read_real(name: str, folder: str, **overrides) -> tuple[object, dict[str, LabelTable]]:
    """The DataModule on a real label folder and its splits, each passing the base checks."""
    dm = build_datamodule(small_config(name, real_labels(folder), **overrides))
    splits = dm.read_splits()
    for split, table in splits.items():
        check_labels(table, dm.scale, split)
    return dm, splits


def assert_disjoint(splits: dict[str, LabelTable]) -> None:
    ids = {split: set(t.image_ids) for split, t in splits.items()}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]


def test_ava_tanet_csv() -> None:
    table = read_ava_csv(real_labels("ava_tanet", "test.csv"))
    assert len(table) == 12_776 and len(set(table.image_ids)) == 12_776
    np.testing.assert_allclose(table.distributions.sum(axis=1), 1.0, atol=1e-12)
    assert table.scores.min() == pytest.approx(2.0, abs=0.01)
    assert table.scores.max() == pytest.approx(8.3, abs=0.1)
    histogram = np.histogram(table.scores, bins=np.arange(1, 11))[0]
    assert histogram.tolist() == [1, 30, 379, 3344, 6544, 2314, 163, 1, 0]
    assert set(table.extras) == {"tag1", "tag2", "challenge"}
    with real_labels("elta_csv", "ava", "test.csv").open(newline="") as handle:
        published = np.asarray([float(row["score"]) for row in csv.DictReader(handle)])
    np.testing.assert_allclose(table.scores, published, atol=1e-6)


def test_ava_native_txt_built_from_the_real_rows(tmp_path: Path) -> None:
    """AVA.txt is not among the shared files: rewrite the real test rows in its layout."""
    table = read_ava_csv(real_labels("ava_tanet", "test.csv"))
    with real_labels("ava_tanet", "test.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [f"score{k}" for k in range(2, 12)] + ["tag1", "tag2", "tag3"]
    lines = [
        " ".join([str(k + 1), r["image_id"], *(r[c] for c in columns)]) for k, r in enumerate(rows)
    ]
    (tmp_path / "AVA.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "aesthetics_image_lists").mkdir()
    test_ids = [r["image_id"] for r in rows[:2000]]
    (tmp_path / "aesthetics_image_lists" / "generic_test.jpgl").write_text("\n".join(test_ids))
    dm = build_datamodule(small_config("ava", tmp_path, val_fraction=0.05))
    splits = dm.read_splits()
    assert {s: len(t) for s, t in splits.items()} == {"train": 10_237, "val": 539, "test": 2000}
    assert_disjoint(splits)
    merged = LabelTable.concat([splits["train"], splits["val"], splits["test"]])
    order = {image_id: k for k, image_id in enumerate(table.image_ids)}
    rows_in_file = [order[i] for i in merged.image_ids]
    np.testing.assert_allclose(merged.distributions, table.distributions[rows_in_file])


def test_aadb_elta_csv() -> None:
    dm, splits = read_real("aadb", "elta_csv/aadb")
    assert dm.layout == "elta_csv"
    assert {s: len(t) for s, t in splits.items()} == {"train": 8458, "val": 500, "test": 1000}
    train = splits["train"].scores
    assert train.min() == 0.0 and train.max() == 1.0
    assert train.mean() == pytest.approx(0.511, abs=0.002)
    assert train.std() == pytest.approx(0.184, abs=0.002)
    histogram = np.histogram(train * dm.scale.to_common, bins=np.arange(11))[0]  # 0.1 bins
    assert histogram.tolist() == [124, 201, 491, 1160, 1530, 1812, 1533, 967, 485, 155]
    assert_disjoint(splits)
    warnings = split_overlap_warnings(splits)
    assert len(warnings) == 1 and "validation and test splits share 127 images" in warnings[0]


def test_para_elta_csv() -> None:
    dm, splits = read_real("para", "elta_csv/para")
    assert not dm.has_distribution
    assert {s: len(t) for s, t in splits.items()} == {"train": 27_218, "val": 1000, "test": 3000}
    train = splits["train"].scores
    assert train.min() == pytest.approx(1.18) and train.max() == pytest.approx(4.42)
    assert train.mean() * 2 == pytest.approx(6.30, abs=0.01)
    assert train.std() * 2 == pytest.approx(1.09, abs=0.01)
    assert all(s.distributions is None for s in splits.values())
    assert_disjoint(splits)
    assert split_overlap_warnings(splits) == []


def test_tad66k_native_merge_with_themes() -> None:
    dm, splits = read_real("tad66k", "tad66k_native", val_fraction=0.05)
    assert dm.layout == "native"
    assert len(splits["train"]) + len(splits["val"]) == 52_248 and len(splits["test"]) == 14_079
    assert len(splits["val"]) == round(0.05 * 52_248)
    scores = np.concatenate([splits["train"].scores, splits["val"].scores])
    assert scores.min() == pytest.approx(1.13) and scores.max() == pytest.approx(9.46)
    assert scores.mean() == pytest.approx(5.44, abs=0.01)
    assert scores.std() == pytest.approx(1.45, abs=0.01)
    assert_disjoint(splits)
    for table in splits.values():
        assert None not in table.extras["theme"]  # the 478 moved images found in the other split
    assert len(set(splits["test"].extras["theme"])) == 47


def test_tad66k_elta_csv_val_is_test() -> None:
    _, splits = read_real("tad66k", "elta_csv/tad66k")
    assert {s: len(t) for s, t in splits.items()} == {
        "train": 52_224,
        "val": 14_076,
        "test": 14_076,
    }
    warnings = split_overlap_warnings(splits)
    assert len(warnings) == 1 and "validation split is the test split" in warnings[0]
    _, carved = read_real("tad66k", "elta_csv/tad66k", val_split="carve")
    assert len(carved["val"]) + len(carved["train"]) == 52_224
    assert split_overlap_warnings(carved) == []
