"""The shared part of the DataModules that read a user's own copy of a dataset.

The user gives ``data.root`` only. :class:`FolderDataModule` finds the label folder and the
image folder under it, detects the label layout from the files present (``native``: the files
the dataset's authors distribute; ``elta_csv``: the ELTA authors' ``train.csv`` / ``val.csv`` /
``test.csv``), applies the split policy (the dataset's own validation split, or a seeded
carve-out from train), warns when two splits share images, and reuses the per-image checks (and
the resized copy) that ``elta prepare`` wrote. Subclasses only read their label files.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from elta_lightning.config import ConfigError
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.datamodules.labels import LabelFileError, LabelTable

log = logging.getLogger(__name__)

LAYOUTS = ("native", "elta_csv")
ELTA_CSV_FILES = ("train.csv", "val.csv", "test.csv")

# Files written by `elta prepare` (see prepare.py) and read back here.
INDEX_FILE = "index.csv"
META_FILE = "prepare.json"
REPORT_FILE = "report.md"
RESIZED_FOLDER = "images"
INDEX_COLUMNS = ("image_id", "status", "detail", "width", "height")


def read_csv_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV file with a header, as ``(line number, row)``; columns are found by name.

    Raises :class:`LabelFileError` naming the file when a column in ``columns`` is missing.
    """
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = header
        missing = [c for c in columns if c not in header]
        if missing:
            raise LabelFileError(
                f"{path}, line 1: missing column(s) {missing}; expected a header with "
                f"{list(columns)}, got {header}"
            )
        for row in reader:
            yield reader.line_num, row


def parse_number(value: str | None, where: str, column: str) -> float:
    """``value`` as a float, or a :class:`LabelFileError` saying where and which column."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LabelFileError(
            f"{where}: column {column!r} must be a number, got {value!r}"
        ) from None


def read_score_csv(
    path: Path, id_column: str = "image_id", score_column: str = "score", divide_by: float = 1.0
) -> LabelTable:
    """A scalar-score CSV (``image_id,score``); scores are divided by ``divide_by`` to bring the
    ELTA authors' common 0..10 scale back to the dataset's own scale."""
    ids, scores, sources = [], [], []
    for line, row in read_csv_rows(path, (id_column, score_column)):
        image_id = (row[id_column] or "").strip()
        where = f"{path}, line {line} (image {image_id!r})"
        scores.append(parse_number(row[score_column], where, score_column) / divide_by)
        ids.append(image_id)
        sources.append(f"{path}:{line}")
    if not ids:
        raise LabelFileError(f"{path}: no label rows below the header")
    return LabelTable(image_ids=ids, scores=np.asarray(scores), sources=sources)


def carve_validation(
    table: LabelTable, fraction: float, seed: int
) -> tuple[LabelTable, LabelTable]:
    """Split ``table`` into (train, val) with ``round(fraction * N)`` random rows in val.

    Seeded, so every process and every run with the same seed gets the same split; both parts
    keep the file's row order.
    """
    count = round(fraction * len(table))
    if not 1 <= count < len(table):
        raise LabelFileError(
            f"cannot carve a validation split of data.val_fraction={fraction} from "
            f"{len(table)} training rows ({count} rows)"
        )
    order = np.random.default_rng(seed).permutation(len(table))
    val = np.sort(order[:count])
    train = np.sort(order[count:])
    return table.subset(train), table.subset(val)


def resolve_under(base: Path, path: str) -> Path:
    """``path`` (``~`` expanded) if absolute, else relative to ``base``."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base / candidate


@dataclass
class PreparedIndex:
    """What ``elta prepare`` found for each image id (see prepare.py for the writer)."""

    folder: Path
    dataset: str
    statuses: dict[str, tuple[str, str]]
    resized: Path | None

    @classmethod
    def load(cls, folder: Path) -> PreparedIndex:
        meta_path, index_path = folder / META_FILE, folder / INDEX_FILE
        if not meta_path.is_file() or not index_path.is_file():
            raise ConfigError(
                f"data.prepared={folder}: no {META_FILE} / {INDEX_FILE} there; run "
                "`elta prepare` first, or set data.prepared=null"
            )
        meta = json.loads(meta_path.read_text())
        statuses = {
            row["image_id"]: (row["status"], row["detail"])
            for _, row in read_csv_rows(index_path, INDEX_COLUMNS)
        }
        resized = folder / RESIZED_FOLDER if meta.get("resize") else None
        return cls(folder=folder, dataset=meta["dataset"], statuses=statuses, resized=resized)


class FolderDataModule(IAADataModule):
    """A dataset read from the user's folder ``data.root``; see the module docstring.

    Subclasses set ``layout_files`` (the files, relative to the label folder, that identify
    each layout), the candidate sub-folders of ``data.root`` for labels and images, and
    implement :meth:`read_native` / :meth:`read_elta_csv`. A reader returns ``train`` and
    ``test`` tables and, where the files define one, ``val``.
    """

    layout_files: dict[str, tuple[str, ...]]
    label_dir_candidates: tuple[str, ...] = ("",)
    image_dir_candidates: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        if not self.cfg.root:
            raise ConfigError(
                f"data.root is not set: give the folder of your {self.name} download "
                "(DATA_ROOT=... for make, data.root=... for elta)"
            )
        root = Path(self.cfg.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data.root={self.cfg.root}: no such folder")
        return root

    def under_root(self, path: str) -> Path:
        """``path`` if absolute, else relative to ``data.root``."""
        return resolve_under(self.root, path)

    @cached_property
    def _labels(self) -> tuple[Path, str]:
        """(label folder, layout), found once from the files present: the native layout in
        any candidate folder wins over the ELTA CSVs (``data.layout`` picks one explicitly)."""
        if self.cfg.labels_dir:
            folders = [self.under_root(self.cfg.labels_dir)]
        else:
            folders = [self.root / c for c in self.label_dir_candidates]
        wanted = LAYOUTS if self.cfg.layout == "auto" else (self.cfg.layout,)
        for layout in wanted:
            for folder in folders:
                if all((folder / f).is_file() for f in self.layout_files[layout]):
                    log.info("%s: %s layout in %s", self.name, layout, folder)
                    return folder, layout
        looked = ", ".join(str(f) for f in folders)
        expected = "; or ".join(
            f"{layout} ({', '.join(self.layout_files[layout])})" for layout in wanted
        )
        raise LabelFileError(
            f"{self.name}: no label files found in {looked}. Expected the {expected}. Point "
            "data.root at your download, or set data.labels_dir / data.layout."
        )

    @property
    def labels_dir(self) -> Path:
        return self._labels[0]

    @property
    def layout(self) -> str:
        """``native`` or ``elta_csv``: ``data.layout``, or detected from the label files."""
        return self._labels[1]

    def label_path(self, path: str) -> Path:
        """``path`` if absolute, else relative to the label folder."""
        return resolve_under(self.labels_dir, path)

    @cached_property
    def source_image_dir(self) -> Path:
        """The user's image folder: ``data.image_dir``, else the first usual one that exists."""
        if self.cfg.image_dir:
            folder = self.under_root(self.cfg.image_dir)
            if not folder.is_dir():
                raise ConfigError(f"data.image_dir={self.cfg.image_dir}: no such folder {folder}")
            return folder
        for candidate in self.image_dir_candidates:
            if (self.root / candidate).is_dir():
                return self.root / candidate
        return self.root

    @cached_property
    def prepared(self) -> PreparedIndex | None:
        """The index written by ``elta prepare`` (``data.prepared``), if any."""
        if not self.cfg.prepared:
            return None
        index = PreparedIndex.load(Path(self.cfg.prepared).expanduser())
        if index.dataset != self.name:
            raise ConfigError(
                f"data.prepared={self.cfg.prepared} was written for {index.dataset!r}, "
                f"not {self.name!r}"
            )
        return index

    @property
    def image_dir(self) -> Path:
        """The resized copy written by ``elta prepare`` if there is one, else the user's folder."""
        prepared = self.prepared
        if prepared is not None and prepared.resized is not None:
            return prepared.resized
        return self.source_image_dir

    def read_native(self) -> dict[str, LabelTable]:
        """Splits from the dataset's own label files."""
        raise NotImplementedError

    def read_elta_csv(self) -> dict[str, LabelTable]:
        """Splits from the ELTA authors' ``train.csv`` / ``val.csv`` / ``test.csv``."""
        raise NotImplementedError

    def read_splits(self) -> dict[str, LabelTable]:
        splits = self.read_native() if self.layout == "native" else self.read_elta_csv()
        train, val = splits["train"], splits.get("val")
        if val is None or self.cfg.val_split == "carve":
            why = "no validation split in the files" if val is None else "data.val_split=carve"
            train, val = carve_validation(train, self.cfg.val_fraction, self.cfg.split_seed)
            log.info(
                "%s: validation = %d rows carved from train (%s; data.val_fraction=%s, "
                "data.split_seed=%d)",
                self.name,
                len(val),
                why,
                self.cfg.val_fraction,
                self.cfg.split_seed,
            )
        return {"train": train, "val": val, "test": splits["test"]}

    def _check_images(self, table: LabelTable, split: str) -> LabelTable:
        """Without ``data.prepared``: the base class's file-exists check. With it: the statuses
        ``elta prepare`` found (missing, unreadable, ...), without touching the files."""
        prepared = self.prepared
        if prepared is None:
            return super()._check_images(table, split)
        found = [prepared.statuses.get(i) for i in table.image_ids]
        unknown = [k for k, status in enumerate(found) if status is None]
        if unknown:
            shown = ", ".join(f"{table.image_ids[k]} ({table.sources[k]})" for k in unknown[:5])
            raise LabelFileError(
                f"{split} split: {len(unknown)} image(s) not in the index {prepared.folder} "
                f"(written for other label files?): {shown}. Run `elta prepare` again."
            )
        bad = np.asarray([k for k, status in enumerate(found) if status[0] != "ok"], dtype=int)
        shown = "; ".join(
            f"{table.image_ids[k]} ({table.sources[k]}): {found[k][1]}" for k in bad[:5]
        )
        problem = f"missing or unreadable according to {prepared.folder / REPORT_FILE}"
        return self.leave_out(table, split, bad, problem, shown)
