"""``elta prepare``: check every label row against the image folder once, before training.

:func:`prepare_dataset` reads a dataset's labels like a training run would, then checks each row
(score finite and in range, image id safe and unique within its split) and each distinct image
(present, decodable to the end, size). It writes into ``out_dir``:

- ``index.csv``: ``image_id,status,detail,width,height`` with status ``ok`` / ``missing`` /
  ``unreadable``; a DataModule given ``data.prepared=<out_dir>`` takes each image's status from
  here instead of touching every file at start-up, and leaves the bad ones out when
  ``data.skip_missing_images=true`` (counted and logged) or names them in its error otherwise;
- ``report.md``: every problem with its file and line, split warnings, counts;
- ``prepare.json``: what was checked (dataset, layout, folders, resize);
- ``images/``: with ``resize``, a copy of every readable image, upright RGB, its short side
  shrunk to ``resize`` pixels, which the DataModule then reads instead of the originals.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

from elta_lightning.datamodules.base import split_overlap_warnings
from elta_lightning.datamodules.folder import (
    INDEX_COLUMNS,
    INDEX_FILE,
    META_FILE,
    REPORT_FILE,
    RESIZED_FOLDER,
    FolderDataModule,
)
from elta_lightning.datamodules.images import ImageDecodeError, load_rgb
from elta_lightning.datamodules.label_checks import bad_label_rows, is_safe_id
from elta_lightning.datamodules.labels import LabelTable
from elta_lightning.scales import ScoreScale

log = logging.getLogger(__name__)

JPEG_QUALITY = 95


@dataclass
class ImageCheck:
    """What one image file turned out to be."""

    image_id: str
    status: str
    detail: str = ""
    width: int = 0
    height: int = 0


@dataclass
class PrepareReport:
    """Outcome of :func:`prepare_dataset`; ``summary()`` is what the command line prints."""

    out_dir: Path
    dataset: str
    layout: str
    rows: dict[str, int]
    images: dict[str, int]
    label_problems: list[str] = field(default_factory=list)
    image_problems: list[str] = field(default_factory=list)
    split_warnings: list[str] = field(default_factory=list)
    small_images: int = 0
    resize: int | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no label row and no image has a problem."""
        return not self.label_problems and not self.image_problems

    def summary(self) -> str:
        rows = ", ".join(f"{split} {count:,}" for split, count in self.rows.items())
        images = ", ".join(f"{status} {count:,}" for status, count in sorted(self.images.items()))
        lines = [
            f"{self.dataset} ({self.layout} layout): label rows {rows}; images {images}; "
            f"{len(self.label_problems)} label problem(s); {self.seconds:.1f} s",
            *(f"warning: {message}" for message in self.split_warnings),
            f"report: {self.out_dir / REPORT_FILE}",
        ]
        if self.resize:
            lines.append(
                f"resized copy (short side {self.resize}): {self.out_dir / RESIZED_FOLDER}"
            )
        hint = " data.skip_missing_images=true" if self.image_problems else ""
        lines.append(f"train with: data.prepared={self.out_dir}{hint}")
        return "\n".join(lines)


def prepare_dataset(
    dm: FolderDataModule, out_dir: str | Path, resize: int | None = None, workers: int = 0
) -> PrepareReport:
    """Check ``dm``'s labels and images, write index, report and (with ``resize``) a resized
    copy into ``out_dir``; return the counts and problems. ``workers`` > 1 decodes in that many
    processes. Label files that cannot be parsed at all raise :class:`LabelFileError`."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = dm.read_splits()
    label_problems = [
        p for split, t in tables.items() for p in label_problems_of(t, dm.scale, split)
    ]
    first_source = _first_sources(tables)
    transforms = dm.cfg.transforms
    needed = max(transforms.train_resize, transforms.eval_resize)
    if resize is not None and resize < needed:
        log.warning(
            "%s: resize=%d is below the transforms' %d px: the copies will be upscaled again",
            dm.name,
            resize,
            needed,
        )
    check = partial(
        check_image,
        image_dir=dm.source_image_dir,
        draft_size=resize or needed,
        resized_dir=out_dir / RESIZED_FOLDER if resize else None,
        resize=resize,
    )
    log.info("%s: checking %d images in %s", dm.name, len(first_source), dm.source_image_dir)
    checks = _run(check, sorted(first_source), workers)
    report = PrepareReport(
        out_dir=out_dir,
        dataset=dm.name,
        layout=dm.layout,
        rows={split: len(t) for split, t in tables.items()},
        images=dict(Counter(c.status for c in checks)),
        label_problems=label_problems,
        image_problems=[
            f"{c.image_id} ({first_source[c.image_id]}): {c.status}, {c.detail}"
            for c in checks
            if c.status != "ok"
        ],
        split_warnings=split_overlap_warnings(tables),
        small_images=sum(c.status == "ok" and min(c.width, c.height) < needed for c in checks),
        resize=resize,
    )
    _write_index(out_dir / INDEX_FILE, checks)
    report.seconds = time.perf_counter() - start
    _write_meta(out_dir / META_FILE, dm, report)
    (out_dir / REPORT_FILE).write_text(render_report(report, dm, needed))
    return report


def label_problems_of(table: LabelTable, scale: ScoreScale, split: str) -> list[str]:
    """One line per problem row and rule of :func:`bad_label_rows` (score not finite or out of
    range, unsafe or duplicate id), in row order, with the score or the id's first row."""
    bad = bad_label_rows(table, scale)
    scores, sources = table.scores.tolist(), table.sources
    low, high = scale.minimum, scale.maximum
    problems = [(k, f"score {scores[k]} is not a finite number") for k in bad.not_finite.tolist()]
    problems += [
        (k, f"score {scores[k]:g} outside [{low:g}, {high:g}]") for k in bad.out_of_range.tolist()
    ]
    problems += [
        (k, "image id is empty or leaves the image folder") for k in bad.unsafe_id.tolist()
    ]
    problems += [
        (k, f"duplicate image id (first at {sources[first]})")
        for k, first in zip(bad.repeated.tolist(), bad.first_of[bad.repeated].tolist())
    ]
    problems.sort(key=lambda problem: problem[0])  # stable: a row's problems stay in rule order
    return [f"{split}: {sources[k]} ({table.image_ids[k]!r}): {what}" for k, what in problems]


def _first_sources(tables: dict[str, LabelTable]) -> dict[str, str]:
    """Each safe image id -> the first label row (file:line) naming it, over all splits."""
    sources: dict[str, str] = {}
    for table in tables.values():
        for image_id, source in zip(table.image_ids, table.sources):
            if is_safe_id(image_id):
                sources.setdefault(image_id, source)
    return sources


def check_image(
    image_id: str,
    image_dir: Path,
    draft_size: int,
    resized_dir: Path | None = None,
    resize: int | None = None,
) -> ImageCheck:
    """Decode ``image_dir / image_id`` to its last byte (at reduced JPEG scale, which still reads
    all of the file, so truncation shows) and, with ``resized_dir``, save the resized copy."""
    path = image_dir / image_id
    if not path.is_file():
        return ImageCheck(image_id, "missing", f"{path}: file not found")
    try:
        image = load_rgb(path, draft_size)
    except ImageDecodeError as error:
        return ImageCheck(image_id, "unreadable", str(error))
    with Image.open(path) as header:
        width, height = header.size
    if resized_dir is not None and resize is not None:
        save_resized(image, resized_dir / image_id, resize)
    return ImageCheck(image_id, "ok", "", width, height)


def save_resized(image: Image.Image, path: Path, short_side: int) -> None:
    """Save ``image`` with its short side shrunk to ``short_side`` (never enlarged); JPEG for
    file names Pillow cannot map to a format."""
    scale = short_side / min(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = Image.registered_extensions().get(path.suffix.lower(), "JPEG")
    options = {"quality": JPEG_QUALITY} if kind == "JPEG" else {}
    image.save(path, format=kind, **options)


def _run(check: partial, image_ids: list[str], workers: int) -> list[ImageCheck]:
    if workers <= 1:
        return [check(i) for i in image_ids]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(check, image_ids, chunksize=256))


def _write_index(path: Path, checks: list[ImageCheck]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(INDEX_COLUMNS)
        for c in checks:
            writer.writerow([c.image_id, c.status, c.detail, c.width, c.height])


def _write_meta(path: Path, dm: FolderDataModule, report: PrepareReport) -> None:
    meta = {
        "dataset": dm.name,
        "layout": dm.layout,
        "labels_dir": str(dm.labels_dir),
        "image_dir": str(dm.source_image_dir),
        "resize": report.resize,
        "rows": report.rows,
        "images": report.images,
        "label_problems": len(report.label_problems),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path.write_text(json.dumps(meta, indent=2))


def render_report(report: PrepareReport, dm: FolderDataModule, needed: int) -> str:
    """The markdown report: summary, split warnings, every label and image problem."""

    def section(title: str, items: list[str]) -> list[str]:
        return [f"\n## {title} ({len(items)})", *(f"- {item}" for item in items)]

    lines = [
        f"# elta prepare: {report.dataset}",
        f"- labels: {dm.labels_dir} ({report.layout} layout)",
        f"- images: {dm.source_image_dir}",
        "- label rows: " + ", ".join(f"{s} {n:,}" for s, n in report.rows.items()),
        "- distinct images: " + ", ".join(f"{s} {n:,}" for s, n in sorted(report.images.items())),
        f"- readable images with a side below {needed} px (upscaled by the transforms): "
        f"{report.small_images:,}",
        f"- resized copy: {report.out_dir / RESIZED_FOLDER} (short side {report.resize})"
        if report.resize
        else "- resized copy: none",
        f"- time: {report.seconds:.1f} s",
    ]
    lines += section("Split warnings", report.split_warnings)
    lines += section("Label problems", report.label_problems)
    lines += section("Image problems", report.image_problems)
    lines += [
        "\n## Next",
        f"Train with `data.prepared={report.out_dir}`; images with problems stop the run with "
        "their names, or are left out (counted) with `data.skip_missing_images=true`.",
    ]
    return "\n".join(lines) + "\n"
