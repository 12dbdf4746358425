"""PARA: 9-level vote distributions on 1..5 in 0.5 steps (group-level, GIAA).

Native: ``annotation/PARA-GiaaTrain.csv`` / ``PARA-GiaaTest.csv`` (the official split; the
validation split is carved from train), images under ``imgs/<sessionId>/<imageName>``. The
target is the distribution of the ``aestheticScore_1.0`` .. ``aestheticScore_5.0`` columns and
the mean ``aestheticScore_mean``; ``semantic`` (and ``data.para.extra_columns``) go to
``extras``. ELTA: ``train.csv`` / ``val.csv`` / ``test.csv`` with ``image_id,score`` where
score = mean x 2 and no session folder: each image's session is looked up in the GIAA files when
they are there, else by listing the session folders once. The ELTA layout has no distributions.
Accuracy counts a mean > 3 as high.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from elta_lightning.datamodules.folder import (
    ELTA_CSV_FILES,
    FolderDataModule,
    parse_number,
    read_csv_rows,
    read_score_csv,
)
from elta_lightning.datamodules.labels import LabelFileError, LabelTable
from elta_lightning.scales import PARA_SCALE

log = logging.getLogger(__name__)

GIAA_FILES = {"train": "annotation/PARA-GiaaTrain.csv", "test": "annotation/PARA-GiaaTest.csv"}
PARA_VOTE_COLUMNS = tuple(f"aestheticScore_{level:.1f}" for level in PARA_SCALE.levels)
PARA_MEAN_COLUMN = "aestheticScore_mean"
PARA_ID_COLUMNS = ("imageName", "sessionId")


def read_para_giaa(path: str | Path, extra_columns: tuple[str, ...] = ()) -> LabelTable:
    """A PARA GIAA file: image id ``<sessionId>/<imageName>``, the 9-level vote shares
    (normalised, as the columns may hold counts) and the mean from ``aestheticScore_mean``.

    ``semantic`` (when present) and ``extra_columns`` (required) are kept as text in ``extras``.
    """
    path = Path(path)
    required = (*PARA_ID_COLUMNS, *PARA_VOTE_COLUMNS, PARA_MEAN_COLUMN, *extra_columns)
    ids, votes, means, sources = [], [], [], []
    extras: dict[str, list] = {column: [] for column in extra_columns}
    for line, row in read_csv_rows(path, required):
        name, session = ((row[c] or "").strip() for c in PARA_ID_COLUMNS)
        where = f"{path}, line {line} (image {session}/{name})"
        if not name or not session:
            raise LabelFileError(f"{where}: empty imageName or sessionId")
        counts = [parse_number(row[c], where, c) for c in PARA_VOTE_COLUMNS]
        if any(not np.isfinite(c) or c < 0 for c in counts):
            raise LabelFileError(f"{where}: vote shares must be finite and >= 0, got {counts}")
        if sum(counts) <= 0:
            raise LabelFileError(f"{where}: the row has no votes (all {PARA_VOTE_COLUMNS} are 0)")
        ids.append(f"{session}/{name}")
        votes.append(counts)
        means.append(parse_number(row[PARA_MEAN_COLUMN], where, PARA_MEAN_COLUMN))
        sources.append(f"{path}:{line}")
        for column in dict.fromkeys(("semantic", *extra_columns)):
            if column in row:
                extras.setdefault(column, []).append(row[column])
    if not ids:
        raise LabelFileError(f"{path}: no label rows below the header")
    counts_array = np.asarray(votes, dtype=np.float64)
    return LabelTable(
        image_ids=ids,
        scores=np.asarray(means),
        distributions=counts_array / counts_array.sum(axis=1, keepdims=True),
        sources=sources,
        extras=extras,
    )


def sessions_from_giaa(paths: list[Path]) -> dict[str, str]:
    """Image name -> session folder, from the ``imageName`` / ``sessionId`` columns."""
    sessions: dict[str, str] = {}
    for path in paths:
        for line, row in read_csv_rows(path, PARA_ID_COLUMNS):
            name, session = ((row[c] or "").strip() for c in PARA_ID_COLUMNS)
            _add_session(sessions, name, session, f"{path}, line {line}")
    return sessions


def sessions_from_folders(image_dir: Path) -> dict[str, str]:
    """Image name -> session folder, by listing every sub-folder of ``image_dir`` once."""
    sessions: dict[str, str] = {}
    with os.scandir(image_dir) as folders:
        for folder in sorted((f for f in folders if f.is_dir()), key=lambda f: f.name):
            with os.scandir(folder.path) as files:
                for entry in files:
                    if entry.is_file():
                        _add_session(sessions, entry.name, folder.name, folder.path)
    return sessions


def _add_session(sessions: dict[str, str], name: str, session: str, where: str) -> None:
    if sessions.setdefault(name, session) != session:
        raise LabelFileError(
            f"{where}: image {name!r} is in session {session!r} and in {sessions[name]!r}; "
            "the ELTA CSV names images without their session, so the name must be unique"
        )


class PARADataModule(FolderDataModule):
    """PARA (``dataset=para``): 9-level distributions (native layout), threshold 3."""

    name = "para"
    scale = PARA_SCALE
    layout_files = {"native": tuple(GIAA_FILES.values()), "elta_csv": ELTA_CSV_FILES}
    image_dir_candidates = ("imgs", "images")

    @property
    def has_distribution(self) -> bool:
        """Vote distributions exist in the native GIAA files only, not in the ELTA CSVs."""
        return self.layout == "native"

    def read_native(self) -> dict[str, LabelTable]:
        extra = tuple(self.cfg.para.extra_columns)
        return {
            split: read_para_giaa(self.labels_dir / file, extra)
            for split, file in GIAA_FILES.items()
        }

    def read_elta_csv(self) -> dict[str, LabelTable]:
        splits = {
            split: read_score_csv(self.labels_dir / f"{split}.csv", divide_by=2.0)
            for split in ("train", "val", "test")
        }
        sessions = self._sessions()
        for table in splits.values():
            table.image_ids = [
                f"{sessions[i]}/{i}" if i in sessions else i for i in table.image_ids
            ]
        return splits

    def _sessions(self) -> dict[str, str]:
        """Where each ELTA image name lives: the GIAA files if present, else the folders."""
        for folder in (self.labels_dir, self.root):
            paths = [folder / file for file in GIAA_FILES.values()]
            if all(p.is_file() for p in paths):
                log.info("para: sessions of the ELTA CSV images from %s", folder / "annotation")
                return sessions_from_giaa(paths)
        log.info("para: sessions of the ELTA CSV images by listing %s", self.source_image_dir)
        return sessions_from_folders(self.source_image_dir)
