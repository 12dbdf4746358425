"""Tiny copies of the four datasets in their native layouts and in the ELTA authors' CSV layout
(real JPEGs, real file formats).

``build_tiny_dataset(name, root, layout="native" | "elta_csv")`` writes one into ``root`` and
returns a :class:`TinyDataset` whose ``cfg`` is a ready :class:`DataConfig` (small transforms, no
worker processes); the fixtures in ``conftest.py`` call it. ``real_labels(...)`` finds the real
label files (and skips the test with the reason when they are absent). A module of its own, not
``conftest``, so test files can import it without clashing with other folders' ``conftest``
modules.
"""

from __future__ import annotations

import csv
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elta_lightning.config import DataConfig, TransformConfig

REAL_LABELS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "labels"

TAD66K_THEMES = ("art", "beach", "bird")
PARA_LEVELS = tuple(f"{1 + 0.5 * k:.1f}" for k in range(9))


def real_labels(*parts: str) -> Path:
    """A path under the real label folder, or skip the test with the reason."""
    path = REAL_LABELS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real label files not found at {path} (only in the project's workspace)")
    return path


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A photo-like RGB image: smooth colour gradients, a few shapes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    base = np.stack(
        [127 + 100 * np.sin(x / width * 3 + y / height * 2 + p) for p in phase], axis=-1
    )
    for _ in range(3):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, width / 3)
        base[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 255, size=3)
    base += rng.normal(0, 6, size=base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def png_bomb_header(path: Path, side: int) -> None:
    """A PNG header claiming ``side`` x ``side`` RGB pixels, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (96, 72)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed, size).save(path, quality=90)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def small_config(name: str, root: Path, **overrides) -> DataConfig:
    """A DataConfig for tiny images: resize 40 -> crop 32, eval 32, batch 4, no workers."""
    transforms = TransformConfig(train_resize=40, crop=32, eval_resize=32)
    settings = {"batch_size": 4, "num_workers": 0, "val_fraction": 0.25, "transforms": transforms}
    return DataConfig(name=name, root=str(root), **{**settings, **overrides})


@dataclass
class TinyDataset:
    """A tiny dataset on disk: its config, its root, the rows per split the files define, its
    label layout, and the test split's labels: image id (relative to the image folder, as the
    DataModule names it) -> score on the dataset's own scale."""

    name: str
    root: Path
    cfg: DataConfig
    rows: dict[str, int] = field(default_factory=dict)
    image_paths: list[Path] = field(default_factory=list)
    layout: str = "native"
    test_labels: dict[str, float] = field(default_factory=dict)


def build_ava(root: Path) -> TinyDataset:
    """``AVA.txt`` (20 images, 5 in the official test list), tags, challenges, images/."""
    rng = np.random.default_rng(1)
    lines, paths, test_labels = [], [], {}
    for k in range(20):
        image_id = 700000 + k
        votes = rng.multinomial(150, np.full(10, 0.1)).tolist()
        if k >= 15:
            test_labels[f"{image_id}.jpg"] = float(np.dot(votes, np.arange(1, 11)) / 150)
        tags = [k % 3, 0, 1396 if k % 2 else 1397]
        lines.append(" ".join(str(v) for v in [k + 1, image_id, *votes, *tags]))
        paths.append(root / "images" / f"{image_id}.jpg")
        write_jpeg(paths[-1], seed=k)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    lists = root / "aesthetics_image_lists"
    lists.mkdir()
    (lists / "generic_test.jpgl").write_text("".join(f"{700000 + k}\n" for k in range(15, 20)))
    (root / "tags.txt").write_text("1 Abstract\n2 Black and White\n")
    (root / "challenges.txt").write_text("1396 Green Eyes\n1397 Blue\n")
    cfg = small_config("ava", root)
    rows = {"train+val": 15, "test": 5}
    return TinyDataset("ava", root, cfg, rows, paths, test_labels=test_labels)


def build_aadb(root: Path) -> TinyDataset:
    """AADB label lists (score + ColorHarmony) for 12 / 4 / 4 images; val and test share one."""
    names = {
        "Train": [f"farm1_{k}_1_a_b.jpg" for k in range(12)],
        "Validation": [f"farm2_{k}_2_a_b.jpg" for k in range(4)],
        "TestNew": ["farm2_0_2_a_b.jpg"] + [f"farm3_{k}_3_a_b.jpg" for k in range(3)],
    }
    labels = root / "imgListFiles_label"
    labels.mkdir(parents=True)
    paths = []
    rng = np.random.default_rng(2)
    for split, split_names in names.items():
        scores = rng.uniform(0, 1, size=len(split_names)).round(3)
        attrs = rng.uniform(-1, 1, size=len(split_names)).round(2)
        for attribute, values in (("score", scores), ("ColorHarmony", attrs)):
            text = "".join(f"{n} {v}\n" for n, v in zip(split_names, values))
            (labels / f"imgList{split}Regression_{attribute}.txt").write_text(text)
        if split == "TestNew":
            test_labels = dict(zip(split_names, scores.tolist()))
        for name in split_names:
            paths.append(root / "datasetImages_originalSize" / name)
            if not paths[-1].exists():
                write_jpeg(paths[-1], seed=len(paths))
    cfg = small_config("aadb", root)
    rows = {"train": 12, "val": 4, "test": 4}
    return TinyDataset("aadb", root, cfg, rows, paths, test_labels=test_labels)


def build_tad66k(root: Path) -> TinyDataset:
    """``labels/merge/{train,test}.csv`` (16 / 6) and ``labels/unmerge/<split>/<theme>.csv``."""
    rng = np.random.default_rng(3)
    paths = []
    for split, count in (("train", 16), ("test", 6)):
        names = [f"{split}_user{k}@N0{k}.jpg" for k in range(count)]
        scores = rng.uniform(1.2, 9.4, size=count).round(2)
        write_csv(
            root / "labels" / "merge" / f"{split}.csv",
            ["image", "score"],
            [[n, s] for n, s in zip(names, scores)],
        )
        for t, theme in enumerate(TAD66K_THEMES):
            write_csv(
                root / "labels" / "unmerge" / split / f"{theme}.csv",
                ["image", "score"],
                [[n, s] for n, s in list(zip(names, scores))[t :: len(TAD66K_THEMES)]],
            )
        for name in names:
            paths.append(root / "images" / name)
            write_jpeg(paths[-1], seed=len(paths), size=(80, 60))
    test_labels = dict(zip(names, scores.tolist()))  # the last split written: test
    cfg = small_config("tad66k", root)
    rows = {"train+val": 16, "test": 6}
    return TinyDataset("tad66k", root, cfg, rows, paths, test_labels=test_labels)


def para_header() -> list[str]:
    """The leading columns of PARA's GIAA files, in the authors' order."""
    votes = [f"aestheticScore_{level}" for level in PARA_LEVELS]
    return [
        "imageName",
        "sessionId",
        "semantic",
        *votes,
        "aestheticScore_mean",
        "aestheticScore_std",
        "qualityScore_mean",
        "qualityScore_std",
    ]


def para_rows(names: list[tuple[str, str]], rng: np.random.Generator) -> list[list]:
    """GIAA rows: vote counts over the 9 levels, their mean and std, a quality score."""
    levels = np.asarray([float(v) for v in PARA_LEVELS])
    rows = []
    for session, name in names:
        votes = rng.multinomial(25, np.full(9, 1 / 9))
        mean = float(votes @ levels / votes.sum())
        std = float(np.sqrt(votes @ (levels - mean) ** 2 / votes.sum()))
        rows.append(
            [name, session, "portrait", *votes.tolist(), round(mean, 4), round(std, 4), 3.0, 0.5]
        )
    return rows


def build_para(root: Path) -> TinyDataset:
    """``annotation/PARA-Giaa{Train,Test}.csv`` (16 / 5) and ``imgs/<session>/<name>``."""
    rng = np.random.default_rng(4)
    paths = []
    splits = {"Train": 16, "Test": 5}
    start = 0
    for split, count in splits.items():
        names = [(f"session{1 + k % 2}", f"iaa_pub{start + k}_.jpg") for k in range(count)]
        start += count
        giaa = para_rows(names, rng)
        write_csv(root / "annotation" / f"PARA-Giaa{split}.csv", para_header(), giaa)
        mean_column = para_header().index("aestheticScore_mean")
        test_labels = {f"{r[1]}/{r[0]}": float(r[mean_column]) for r in giaa}  # last: Test
        for session, name in names:
            paths.append(root / "imgs" / session / name)
            write_jpeg(paths[-1], seed=len(paths))
    cfg = small_config("para", root)
    rows = {"train+val": 16, "test": 5}
    return TinyDataset("para", root, cfg, rows, paths, test_labels=test_labels)


BUILDERS = {"ava": build_ava, "aadb": build_aadb, "tad66k": build_tad66k, "para": build_para}


# ----- the ELTA authors' CSV layout: train.csv / val.csv / test.csv next to the image folder -----


def build_ava_elta(root: Path) -> TinyDataset:
    """``{train,val,test}.csv`` (13 / 4 / 5) with ``image_id,score2..score11,tag1,tag2,tag3``
    (test.csv also has the optional ``score`` column, as in the ELTA authors' file) and
    ``images/<id>.jpg``."""
    rng = np.random.default_rng(11)
    header = ["image_id", *(f"score{k}" for k in range(2, 12)), "tag1", "tag2", "tag3"]
    levels = np.arange(1, 11)
    paths, start, test_labels = [], 0, {}
    for split, count in (("train", 13), ("val", 4), ("test", 5)):
        rows = []
        for k in range(start, start + count):
            image_id = 800000 + k
            votes = rng.multinomial(int(rng.integers(78, 200)), np.full(10, 0.1))
            row = [image_id, *votes.tolist(), k % 3, 0, 1396 if k % 2 else 1397]
            if split == "test":
                row.append(round(float(votes @ levels / votes.sum()), 9))
                test_labels[f"{image_id}.jpg"] = float(votes @ levels / votes.sum())
            rows.append(row)
            paths.append(root / "images" / f"{image_id}.jpg")
            write_jpeg(paths[-1], seed=100 + k)
        write_csv(root / f"{split}.csv", header + (["score"] if split == "test" else []), rows)
        start += count
    cfg = small_config("ava", root)
    rows = {"train": 13, "val": 4, "test": 5}
    return TinyDataset("ava", root, cfg, rows, paths, "elta_csv", test_labels)


def build_aadb_elta(root: Path) -> TinyDataset:
    """``{train,val,test}.csv`` (12 / 4 / 4, ``image_id,score`` with score = AADB score x 10;
    val and test share one image, as the real files share 127) and
    ``datasetImages_originalSize/``."""
    rng = np.random.default_rng(12)
    names = {
        "train": [f"farm1_{k}_1_c_b.jpg" for k in range(12)],
        "val": [f"farm2_{k}_2_c_b.jpg" for k in range(4)],
        "test": ["farm2_0_2_c_b.jpg"] + [f"farm3_{k}_3_c_b.jpg" for k in range(3)],
    }
    paths = []
    for split, split_names in names.items():
        scores = rng.integers(0, 11, size=len(split_names)).astype(float)
        scores[0] = round(float(rng.uniform(0, 10)), 1)  # not always whole numbers
        write_csv(root / f"{split}.csv", ["image_id", "score"], [*zip(split_names, scores)])
        test_labels = {n: s / 10 for n, s in zip(split_names, scores.tolist())}  # last: test
        for name in split_names:
            paths.append(root / "datasetImages_originalSize" / name)
            if not paths[-1].exists():
                write_jpeg(paths[-1], seed=200 + len(paths))
    cfg = small_config("aadb", root)
    rows = {"train": 12, "val": 4, "test": 4}
    return TinyDataset("aadb", root, cfg, rows, paths, "elta_csv", test_labels)


def build_tad66k_elta(root: Path) -> TinyDataset:
    """``{train,val,test}.csv`` (14 / 6 / 6, ``image_id,score`` on 1..10) where val.csv is a
    byte-for-byte copy of test.csv, as in the ELTA authors' files, and ``images/``."""
    rng = np.random.default_rng(13)
    paths = []
    for split, count in (("train", 14), ("test", 6)):
        names = [f"elta_{split}{k}@N0{k}.jpg" for k in range(count)]
        scores = rng.uniform(1.2, 9.4, size=count).round(2)
        write_csv(root / f"{split}.csv", ["image_id", "score"], [*zip(names, scores)])
        for name in names:
            paths.append(root / "images" / name)
            write_jpeg(paths[-1], seed=300 + len(paths), size=(80, 60))
    (root / "val.csv").write_bytes((root / "test.csv").read_bytes())
    test_labels = dict(zip(names, scores.tolist()))  # the last split written: test
    cfg = small_config("tad66k", root)
    rows = {"train": 14, "val": 6, "test": 6}
    return TinyDataset("tad66k", root, cfg, rows, paths, "elta_csv", test_labels)


def build_para_elta(root: Path) -> TinyDataset:
    """``{train,val,test}.csv`` (13 / 4 / 5, ``image_id,score`` with score = mean x 2 and image
    names without their session folder) and ``imgs/<session>/<name>``; no GIAA files, so the
    DataModule finds each image's session by listing the session folders."""
    rng = np.random.default_rng(14)
    levels = np.asarray([float(v) for v in PARA_LEVELS])
    paths, start, test_labels = [], 0, {}
    for split, count in (("train", 13), ("val", 4), ("test", 5)):
        rows = []
        for k in range(start, start + count):
            session, name = f"session{1 + k % 3}", f"iaa_pub{500 + k}_.jpg"
            votes = rng.multinomial(25, np.full(9, 1 / 9))
            rows.append([name, round(2 * float(votes @ levels / votes.sum()), 2)])
            if split == "test":
                test_labels[f"{session}/{name}"] = rows[-1][1] / 2
            paths.append(root / "imgs" / session / name)
            write_jpeg(paths[-1], seed=400 + k)
        write_csv(root / f"{split}.csv", ["image_id", "score"], rows)
        start += count
    cfg = small_config("para", root)
    counts = {"train": 13, "val": 4, "test": 5}
    return TinyDataset("para", root, cfg, counts, paths, "elta_csv", test_labels)


ELTA_BUILDERS = {
    "ava": build_ava_elta,
    "aadb": build_aadb_elta,
    "tad66k": build_tad66k_elta,
    "para": build_para_elta,
}
LAYOUT_BUILDERS = {"native": BUILDERS, "elta_csv": ELTA_BUILDERS}


def build_tiny_dataset(name: str, root: Path, layout: str = "native") -> TinyDataset:
    """Write the tiny copy of dataset ``name`` in ``layout`` (``native`` or ``elta_csv``) into
    ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return LAYOUT_BUILDERS[layout][name](root)
