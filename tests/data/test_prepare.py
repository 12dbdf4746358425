"""``prepare_dataset``: one pass over labels and images, its report, index and resized copy,
and the DataModule reusing them (``data.prepared``)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import ExifTags, Image
from tiny_datasets import TinyDataset, photo

from elta_lightning.config import ConfigError
from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.images import ImageDecodeError
from elta_lightning.datamodules.labels import LabelFileError
from elta_lightning.datamodules.prepare import prepare_dataset


def damage(tiny: TinyDataset) -> None:
    """One missing, one truncated image; one out-of-range score and one duplicate test row."""
    images = tiny.root / "images"
    (images / "test_user2@N02.jpg").unlink()
    data = (images / "test_user4@N04.jpg").read_bytes()
    (images / "test_user4@N04.jpg").write_bytes(data[: len(data) // 2])
    test_csv = tiny.root / "labels" / "merge" / "test.csv"
    with test_csv.open("a") as handle:
        handle.write("test_user5@N05.jpg,4.0\ntest_user0@N00.jpg,11\n")


def index_rows(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "index.csv").open(newline="") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle)}


def test_report_lists_every_problem_with_file_and_line(tiny_tad66k: TinyDataset, tmp_path) -> None:
    damage(tiny_tad66k)
    out = tmp_path / "prepared"
    report = prepare_dataset(build_datamodule(tiny_tad66k.cfg), out)
    assert not report.ok
    assert report.rows == {"train": 12, "val": 4, "test": 8}
    assert report.images == {"ok": 20, "missing": 1, "unreadable": 1}
    test_csv = tiny_tad66k.root / "labels" / "merge" / "test.csv"
    assert report.label_problems == [
        f"test: {test_csv}:8 ('test_user5@N05.jpg'): duplicate image id (first at {test_csv}:7)",
        f"test: {test_csv}:9 ('test_user0@N00.jpg'): score 11 outside [1, 10]",
        f"test: {test_csv}:9 ('test_user0@N00.jpg'): duplicate image id (first at {test_csv}:2)",
    ]
    assert report.image_problems[0].startswith(f"test_user2@N02.jpg ({test_csv}:4): missing")
    assert "truncated" in report.image_problems[1]
    rows = index_rows(out)
    assert rows["test_user2@N02.jpg"]["status"] == "missing"
    assert rows["test_user4@N04.jpg"]["status"] == "unreadable"
    assert rows["test_user1@N01.jpg"]["width"] == "80"
    text = (out / "report.md").read_text()
    assert "## Label problems (3)" in text and "## Image problems (2)" in text
    assert f"{test_csv}:6" in text  # the truncated image's label row
    assert json.loads((out / "prepare.json").read_text())["dataset"] == "tad66k"
    assert "data.skip_missing_images=true" in report.summary()


def test_datamodule_reuses_the_index(tiny_tad66k: TinyDataset, tmp_path: Path) -> None:
    damage(tiny_tad66k)
    prepare_dataset(build_datamodule(tiny_tad66k.cfg), tmp_path / "prepared")
    test_csv = tiny_tad66k.root / "labels" / "merge" / "test.csv"
    test_csv.write_text("\n".join(test_csv.read_text().splitlines()[:7]) + "\n")  # fix the labels
    cfg = replace(tiny_tad66k.cfg, prepared=str(tmp_path / "prepared"))
    with pytest.raises(ImageDecodeError, match=r"2 image\(s\) missing or unreadable .*report.md"):
        build_datamodule(cfg).setup()
    dm = build_datamodule(replace(cfg, skip_missing_images=True))
    dm.setup()
    assert dm.skipped == {"test": 2}
    assert len(torch.cat([b["index"] for b in dm.test_dataloader()])) == 4
    with test_csv.open("a") as handle:
        handle.write("new_image.jpg,5.0\n")
    with pytest.raises(LabelFileError, match=r"1 image\(s\) not in the index .*new_image.jpg"):
        build_datamodule(cfg).setup()
    with pytest.raises(ConfigError, match="written for 'tad66k', not 'aadb'"):
        _ = build_datamodule(replace(cfg, name="aadb")).prepared


def test_resized_copy_is_upright_smaller_and_used(tiny_para: TinyDataset, tmp_path: Path) -> None:
    session = tiny_para.root / "imgs" / "session1"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8
    photo(9, (400, 300)).save(session / "iaa_pub0_.jpg", exif=exif, quality=90)
    out = tmp_path / "prepared"
    report = prepare_dataset(build_datamodule(tiny_para.cfg), out, resize=48, workers=2)
    assert report.ok and report.images == {"ok": 21}
    with Image.open(out / "images" / "session1" / "iaa_pub0_.jpg") as copy:
        assert copy.size == (48, 64)  # rotated upright, short side 48
        assert ExifTags.Base.Orientation not in copy.getexif()
    with Image.open(out / "images" / "session2" / "iaa_pub1_.jpg") as copy:
        assert copy.size == (64, 48)
    dm = build_datamodule(replace(tiny_para.cfg, prepared=str(out)))
    dm.setup()
    assert dm.image_dir == out / "images"
    batch = next(iter(dm.test_dataloader()))
    eval_batch = min(len(dm.datasets["test"]), 2 * dm.cfg.batch_size)  # default: twice training's
    assert batch["image"].shape == (eval_batch, 3, 32, 32) and torch.isfinite(batch["image"]).all()
    serial = tmp_path / "serial"
    prepare_dataset(build_datamodule(tiny_para.cfg), serial, resize=48)  # same in one process
    assert index_rows(out) == index_rows(serial)
    name = Path("session2") / "iaa_pub1_.jpg"
    assert (out / "images" / name).read_bytes() == (serial / "images" / name).read_bytes()
