"""The four DataModules on tiny native-layout copies with real JPEGs: setup, loaders, batches."""

from __future__ import annotations

import logging
import shutil
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tiny_datasets import TinyDataset, small_config, write_csv, write_jpeg

from elta_lightning.config import (
    AADBConfig,
    ConfigError,
    DataConfig,
    TransformConfig,
    load_config,
    project_root,
)
from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.labels import LabelFileError

SCALES = {"ava": (1, 10, 10), "aadb": (0, 1, None), "tad66k": (1, 10, None), "para": (1, 5, 9)}


def test_every_loader_yields_labelled_batches(tiny_dataset: TinyDataset) -> None:
    dm = build_datamodule(tiny_dataset.cfg)
    dm.setup()
    low, high, levels = SCALES[tiny_dataset.name]
    assert dm.layout == "native"
    assert dm.has_distribution == (levels is not None)
    sizes = {split: len(dm.datasets[split]) for split in ("train", "val", "test")}
    if "train+val" in tiny_dataset.rows:
        assert sizes["train"] + sizes["val"] == tiny_dataset.rows["train+val"]
    for split, loader in (
        ("train", dm.train_dataloader()),
        ("val", dm.val_dataloader()),
        ("test", dm.test_dataloader()),
    ):
        batches = list(loader)
        seen = torch.cat([b["index"] for b in batches])
        if split == "train":
            assert len(seen) == sizes[split] // 4 * 4  # drops the last incomplete batch
        else:
            assert seen.tolist() == list(range(sizes[split]))  # every row once, in order
        batch = batches[0]
        side = 32
        assert batch["image"].shape == (len(batch["index"]), 3, side, side)
        assert batch["image"].dtype == torch.float32 and torch.isfinite(batch["image"]).all()
        assert ((batch["score"] >= low) & (batch["score"] <= high)).all()
        assert torch.equal(batch["weight"], torch.ones_like(batch["score"]))
        if levels is None:
            assert "dist" not in batch
        else:
            assert batch["dist"].shape == (len(batch["index"]), levels)
            torch.testing.assert_close(batch["dist"].sum(1), torch.ones(len(batch["index"])))
            means = batch["dist"] @ dm.scale.levels_tensor()
            if tiny_dataset.name == "ava":
                torch.testing.assert_close(means, batch["score"])
            else:  # PARA's mean column, rounded to 4 decimals in the file
                torch.testing.assert_close(means, batch["score"], atol=1e-3, rtol=0)


def test_ava_native_splits_tags_and_official_test_list(tiny_ava: TinyDataset) -> None:
    dm = build_datamodule(tiny_ava.cfg)
    splits = dm.read_splits()
    assert splits["test"].image_ids == [f"{700000 + k}.jpg" for k in range(15, 20)]
    assert len(splits["val"]) == round(0.25 * 15)
    test = splits["test"]
    assert test.extras["challenge"][:2] == [1396, 1397]
    assert test.extras["challenge_name"][:2] == ["Green Eyes", "Blue"]
    assert test.extras["tag1_name"][:3] == [None, "Abstract", "Black and White"]
    assert set(test.extras["tag2_name"]) == {None}


def test_ava_elta_csv_layout_is_detected(tmp_path: Path) -> None:
    header = ["image_id", *(f"score{k}" for k in range(2, 12)), "tag1", "tag2", "tag3"]
    for split, first in (("train", 0), ("val", 8), ("test", 12)):
        rows = [[str(first + k), *([0, 1, 2, 5, 9, 5, 2, 1, 0, 0]), 1, 0, 7] for k in range(4)]
        write_csv(tmp_path / f"{split}.csv", header, rows)
        for row in rows:
            write_jpeg(tmp_path / "images" / f"{row[0]}.jpg", seed=int(row[0]), size=(48, 36))
    dm = build_datamodule(small_config("ava", tmp_path))
    dm.setup()
    assert dm.layout == "elta_csv"
    assert {s: len(t) for s, t in dm.tables.items()} == {"train": 4, "val": 4, "test": 4}
    batch = next(iter(dm.val_dataloader()))
    assert batch["dist"].shape == (4, 10)
    assert (dm.tables["val"].scores == 5.0).all()  # exactly 5.0: low for accuracy (> 5 is high)
    assert not (dm.tables["val"].scores > dm.scale.threshold).any()


def test_aadb_native_attributes_and_shared_val_test_warning(
    tiny_aadb: TinyDataset, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = replace(tiny_aadb.cfg, aadb=AADBConfig(attributes=["ColorHarmony"]))
    dm = build_datamodule(cfg)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert {s: len(t) for s, t in dm.tables.items()} == tiny_aadb.rows
    harmony = dm.tables["train"].extras["ColorHarmony"]
    assert len(harmony) == 12 and all(-1 <= v <= 1 for v in harmony)
    assert any("validation and test splits share 1 images" in m for m in dm.split_warnings)
    assert "share 1 images" in caplog.text
    bad = build_datamodule(replace(tiny_aadb.cfg, aadb=AADBConfig(attributes=["Harmony"])))
    with pytest.raises(ConfigError, match="data.aadb.attributes: unknown attribute"):
        bad.read_splits()


def test_aadb_carve_replaces_the_shared_validation_list(tiny_aadb: TinyDataset) -> None:
    dm = build_datamodule(replace(tiny_aadb.cfg, val_split="carve"))
    dm.setup()
    assert len(dm.tables["val"]) == 3 and len(dm.tables["train"]) == 9
    assert dm.split_warnings == []


def test_tad66k_themes_from_unmerge(tiny_tad66k: TinyDataset) -> None:
    dm = build_datamodule(tiny_tad66k.cfg)
    dm.setup()
    test = dm.tables["test"]
    assert test.extras["theme"] == ["art", "beach", "bird", "art", "beach", "bird"]
    assert set(dm.tables["train"].extras["theme"]) == {"art", "beach", "bird"}
    assert dm.labels_dir == tiny_tad66k.root / "labels"


def test_para_elta_csv_finds_sessions_from_folders_and_giaa(tiny_para: TinyDataset) -> None:
    root = tiny_para.root
    for split, names in (("train", range(0, 12)), ("val", range(12, 16)), ("test", range(16, 21))):
        write_csv(
            root / "elta" / f"{split}.csv",
            ["image_id", "score"],
            [[f"iaa_pub{k}_.jpg", 6.08] for k in names],
        )
    cfg = replace(tiny_para.cfg, layout="elta_csv", labels_dir="elta")
    dm = build_datamodule(cfg)
    dm.setup()
    assert not dm.has_distribution
    assert dm.tables["train"].image_ids[:2] == ["session1/iaa_pub0_.jpg", "session2/iaa_pub1_.jpg"]
    batch = next(iter(dm.test_dataloader()))
    assert "dist" not in batch
    np.testing.assert_allclose(batch["score"].numpy(), 3.04, atol=1e-6)
    shutil.rmtree(root / "annotation")
    listed = build_datamodule(cfg)
    listed.setup()
    assert listed.tables["test"].image_ids == dm.tables["test"].image_ids


def test_para_native_keeps_semantic_and_extra_columns(tiny_para: TinyDataset) -> None:
    cfg = replace(tiny_para.cfg)
    cfg.para.extra_columns = ["qualityScore_mean"]
    table = build_datamodule(cfg).read_splits()["test"]
    assert set(table.extras["semantic"]) == {"portrait"}
    assert table.extras["qualityScore_mean"] == ["3.0"] * 5
    cfg.para.extra_columns = ["colourScore_mean"]
    with pytest.raises(LabelFileError, match=r"PARA-GiaaTrain.csv, line 1: missing column.*colour"):
        build_datamodule(cfg).read_splits()


def test_carve_is_seeded_and_disjoint(tiny_tad66k: TinyDataset) -> None:
    def split_ids(seed: int) -> tuple[set[str], set[str]]:
        splits = build_datamodule(replace(tiny_tad66k.cfg, split_seed=seed)).read_splits()
        return set(splits["train"].image_ids), set(splits["val"].image_ids)

    train, val = split_ids(0)
    assert split_ids(0) == (train, val)
    assert split_ids(1) != (train, val)
    assert not train & val and len(train | val) == 16


def test_root_and_layout_errors(tmp_path: Path, tiny_aadb: TinyDataset) -> None:
    with pytest.raises(ConfigError, match="data.root is not set"):
        _ = build_datamodule(replace(tiny_aadb.cfg, root=None)).layout
    with pytest.raises(ConfigError, match="no such folder"):
        _ = build_datamodule(replace(tiny_aadb.cfg, root=str(tmp_path / "nowhere"))).layout
    with pytest.raises(LabelFileError, match=r"no label files found.*elta_csv \(train.csv"):
        _ = build_datamodule(replace(tiny_aadb.cfg, layout="elta_csv")).layout
    with pytest.raises(LabelFileError, match="imgListTrainRegression_score.txt"):
        _ = build_datamodule(replace(tiny_aadb.cfg, root=str(tmp_path))).layout


@pytest.mark.parametrize("name", ["ava", "aadb", "tad66k", "para"])
def test_dataset_yaml_documents_every_data_option(name: str) -> None:
    """datamodules/<name>.yaml loads, names its DataModule and sets every data option."""
    cfg = load_config([f"dataset={name}", "data.root=/nowhere"])
    dm = build_datamodule(OmegaConf.to_object(cfg.data))
    assert dm.name == name
    written = OmegaConf.load(project_root() / "datamodules" / f"{name}.yaml")["data"]
    others = {"synthetic", "ava", "aadb", "tad66k", "para"} - {name}
    expected = {f.name for f in fields(DataConfig)} - others
    assert set(written) == expected
    assert set(written["transforms"]) == {f.name for f in fields(TransformConfig)}


def test_auto_layout_prefers_native_files_in_a_label_subfolder_over_root_csvs(tmp_path) -> None:
    """An AADB download with the ELTA CSVs at the root and the native lists in their folder."""
    from tiny_datasets import build_tiny_dataset

    tiny = build_tiny_dataset("aadb", tmp_path / "aadb")
    for split in ("train", "val", "test"):
        (tiny.root / f"{split}.csv").write_text("image_id,score\nx.jpg,5\n")
    assert build_datamodule(tiny.cfg).layout == "native"
    assert build_datamodule(replace(tiny.cfg, layout="elta_csv")).layout == "elta_csv"
