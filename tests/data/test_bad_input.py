"""Bad input in real layouts: each gets a clear error naming file and row, or an opted-in skip."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_datasets import TinyDataset, photo, png_bomb_header

from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.base import normalisation
from elta_lightning.datamodules.images import ImageDecodeError
from elta_lightning.datamodules.labels import LabelFileError


def edit_line(path: Path, line: int, text: str | None) -> None:
    """Replace line ``line`` (1-based) of ``path`` with ``text``, or append ``text`` (line 0)."""
    lines = path.read_text().splitlines()
    if line == 0:
        lines.append(text)
    else:
        lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")


def setup_error(tiny: TinyDataset, error: type[Exception], pattern: str, **overrides) -> str:
    with pytest.raises(error) as caught:
        build_datamodule(replace(tiny.cfg, **overrides)).setup()
    message = str(caught.value)
    assert re.search(pattern, message), message
    return message


def test_renamed_and_missing_columns(tiny_tad66k: TinyDataset, tiny_para: TinyDataset) -> None:
    train = tiny_tad66k.root / "labels" / "merge" / "train.csv"
    edit_line(train, 1, "img,score")
    setup_error(
        tiny_tad66k,
        LabelFileError,
        rf"{re.escape(str(train))}, line 1: missing column\(s\) \['image'\]",
    )
    giaa = tiny_para.root / "annotation" / "PARA-GiaaTest.csv"
    edit_line(giaa, 1, giaa.read_text().splitlines()[0].replace("aestheticScore_mean", "mean"))
    setup_error(tiny_para, LabelFileError, r"PARA-GiaaTest.csv, line 1: .*'aestheticScore_mean'")


def test_columns_are_read_by_name_not_position(tiny_tad66k: TinyDataset) -> None:
    train = tiny_tad66k.root / "labels" / "merge" / "train.csv"
    rows = [line.split(",") for line in train.read_text().splitlines()]
    train.write_text("".join(f"{score},{name}\n" for name, score in rows))  # score column first
    dm = build_datamodule(tiny_tad66k.cfg)
    dm.setup()
    assert len(dm.tables["train"]) + len(dm.tables["val"]) == 16


def test_rows_without_votes(tiny_ava: TinyDataset, tiny_para: TinyDataset) -> None:
    ava_txt = tiny_ava.root / "AVA.txt"
    edit_line(ava_txt, 3, "3 700002 0 0 0 0 0 0 0 0 0 0 0 0 1396")
    setup_error(
        tiny_ava, LabelFileError, rf"{re.escape(str(ava_txt))}, line 3 .*'700002'.* no votes"
    )
    edit_line(ava_txt, 3, "3 700002 0 0 0 0 0")
    setup_error(tiny_ava, LabelFileError, r"AVA.txt, line 3: expected 15 space-separated fields")
    giaa = tiny_para.root / "annotation" / "PARA-GiaaTrain.csv"
    fields = giaa.read_text().splitlines()[1].split(",")
    edit_line(giaa, 2, ",".join(fields[:3] + ["0"] * 9 + fields[12:]))
    setup_error(
        tiny_para, LabelFileError, r"PARA-GiaaTrain.csv, line 2 \(image session1/.*no votes"
    )


@pytest.mark.parametrize(
    ("score", "pattern"),
    [
        ("nan", r"score that is not a finite number: .*test.csv:3 \('test_user1@N01.jpg'\)"),
        ("", r"test.csv, line 3 \(image 'test_user1@N01.jpg'\): column 'score' must be a number"),
        ("10.5", r"score outside \[1.0, 10.0\]: .*test.csv:3"),
        ("0", r"score outside \[1.0, 10.0\]: .*test.csv:3"),
    ],
)
def test_bad_scores(tiny_tad66k: TinyDataset, score: str, pattern: str) -> None:
    edit_line(tiny_tad66k.root / "labels" / "merge" / "test.csv", 3, f"test_user1@N01.jpg,{score}")
    setup_error(tiny_tad66k, LabelFileError, pattern)


def test_out_of_range_on_the_elta_scale(tiny_aadb: TinyDataset) -> None:
    labels = tiny_aadb.root / "imgListFiles_label"
    edit_line(labels / "imgListTestNewRegression_score.txt", 2, "farm3_0_3_a_b.jpg 7")
    setup_error(
        tiny_aadb,
        LabelFileError,
        r"test split: 1 row\(s\) with a score outside \[0.0, 1.0\]: .*TestNew.*:2",
    )


def test_duplicate_ids_and_ids_leaving_the_image_folder(tiny_aadb: TinyDataset) -> None:
    train = tiny_aadb.root / "imgListFiles_label" / "imgListTrainRegression_score.txt"
    original = train.read_text()
    edit_line(train, 0, "farm1_3_1_a_b.jpg 0.5")
    setup_error(tiny_aadb, LabelFileError, r"train split: 1 row\(s\) whose image id appears more")
    train.write_text(original)
    edit_line(train, 0, "../../secrets.jpg 0.5")
    setup_error(
        tiny_aadb, LabelFileError, r"leaves the image folder: .*Train.*:13 \('../../secrets"
    )


def test_missing_image_fails_or_is_skipped_when_opted_in(tiny_tad66k: TinyDataset) -> None:
    (tiny_tad66k.root / "images" / "test_user2@N02.jpg").unlink()
    setup_error(
        tiny_tad66k, ImageDecodeError, r"1 image\(s\) not found .*test_user2@N02.jpg .*test.csv:4"
    )
    dm = build_datamodule(replace(tiny_tad66k.cfg, skip_missing_images=True))
    dm.setup()
    assert dm.skipped == {"test": 1} and len(dm.tables["test"]) == 5
    assert len(torch.cat([b["index"] for b in dm.test_dataloader()])) == 5


def break_image(path: Path, kind: str) -> str:
    """Damage the image at ``path``; returns the message the loader must give."""
    if kind == "empty":
        path.write_bytes(b"")
        return r"empty file \(0 bytes\)"
    if kind == "truncated":
        photo(5, (400, 300)).save(path, quality=90)
        path.write_bytes(path.read_bytes()[:3000])
        return "truncated"
    if kind == "text":
        path.write_text("<html>404 Not Found</html>")
        return "not an image file"
    png_bomb_header(path, 20000)
    return "image too large"


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "huge"])
def test_unreadable_images_name_file_and_label_row(tiny_tad66k: TinyDataset, kind: str) -> None:
    path = tiny_tad66k.root / "images" / "test_user1@N01.jpg"
    message = break_image(path, kind)
    dm = build_datamodule(tiny_tad66k.cfg)
    dm.setup()
    with pytest.raises(ImageDecodeError) as caught:
        list(dm.test_dataloader())
    text = str(caught.value)
    assert str(path) in text and re.search(message, text), text
    assert re.search(r"label row .*merge/test.csv:3\)", text), text


def test_cmyk_jpeg_and_16_bit_png_load_through_the_datamodule(tiny_tad66k: TinyDataset) -> None:
    images = tiny_tad66k.root / "images"
    Image.new("CMYK", (80, 60), (0, 255, 255, 0)).save(images / "test_user0@N00.jpg")
    ramp = np.tile(np.linspace(0, 65535, 80).astype(np.uint16), (60, 1))
    Image.fromarray(ramp).save(images / "deep16.png")
    edit_line(tiny_tad66k.root / "labels" / "merge" / "test.csv", 0, "deep16.png,6.5")
    dm = build_datamodule(replace(tiny_tad66k.cfg, eval_batch_size=7))
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in normalisation(dm.cfg.transforms))
    pixels = batch["image"] * std + mean  # back to 0..1
    red = pixels[0].mean(dim=(1, 2))
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1  # CMYK red stays red
    ramp_row = pixels[6, 0, 16]
    assert ramp_row[0] < 0.05 and ramp_row[-1] > 0.95  # 16-bit ramp spans black..white
    assert torch.allclose(pixels[6, 0], pixels[6, 1], atol=1e-5)  # grey
