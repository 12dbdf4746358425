"""AVA: 10-level vote distributions, from the native ``AVA.txt`` or the TANet / ELTA CSV layout.

Native: ``AVA.txt`` (15 space-separated fields per line: index, image id, votes for ratings
1..10, two semantic tag ids, challenge id), the official test list
``aesthetics_image_lists/generic_test.jpgl``, and the rest as training data with a seeded
validation carve-out. ELTA / TANet: ``train.csv`` / ``val.csv`` / ``test.csv`` with header
``image_id,score2,...,score11[,tag1,tag2,tag3][,score]``. Images: ``<image id>.jpg``.
The target is the normalised vote distribution and its mean; accuracy counts a mean > 5 as high.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from elta_lightning.datamodules.folder import ELTA_CSV_FILES, FolderDataModule, read_csv_rows
from elta_lightning.datamodules.labels import LabelFileError, LabelTable
from elta_lightning.scales import AVA_SCALE

log = logging.getLogger(__name__)

AVA_VOTE_COLUMNS = tuple(f"score{k}" for k in range(2, 12))
AVA_TAG_COLUMNS = {"tag1": "tag1", "tag2": "tag2", "tag3": "challenge"}
AVA_TXT_FIELDS = 15


def _check_votes(counts: list[float], where: str) -> None:
    if any(not np.isfinite(c) or c < 0 for c in counts):
        raise LabelFileError(f"{where}: vote counts must be finite and >= 0, got {counts}")
    if sum(counts) <= 0:
        raise LabelFileError(f"{where}: the row has no votes (all ten counts are 0)")


def _vote_table(
    ids: list[str], votes: list[list[float]], sources: list[str], extras: dict[str, list]
) -> LabelTable:
    counts = np.asarray(votes, dtype=np.float64)
    totals = counts.sum(axis=1)
    # mean from the integer counts, so that a mean of exactly 5.0 stays 5.0 (low, not high)
    means = counts @ np.asarray(AVA_SCALE.levels, dtype=np.float64) / totals
    return LabelTable(
        image_ids=[f"{i}.jpg" for i in ids],
        scores=means,
        distributions=counts / totals[:, None],
        sources=sources,
        extras=extras,
    )


def read_ava_csv(path: str | Path) -> LabelTable:
    """Read an AVA split in the TANet / ELTA CSV layout.

    Header ``image_id,score2,...,score11[,tag1,tag2,tag3][,score]``; ``scoreK`` is the number of
    votes for rating K-1. The label is the normalised vote distribution and its mean (a
    ``score`` column is ignored); images are ``<image_id>.jpg``. Columns are found by name; the
    tag columns, when present, go to ``extras`` as ``tag1``, ``tag2`` and ``challenge``. A row
    with a non-number, a negative count or no votes at all raises :class:`LabelFileError`
    naming the file and line.
    """
    path = Path(path)
    ids, votes, sources = [], [], []
    extras: dict[str, list] = {}
    for line, row in read_csv_rows(path, ("image_id", *AVA_VOTE_COLUMNS)):
        image_id = (row["image_id"] or "").strip()
        where = f"{path}, line {line} (image {image_id!r})"
        if not image_id:
            raise LabelFileError(f"{where}: empty image_id")
        try:
            counts = [float(row[c]) for c in AVA_VOTE_COLUMNS]
        except (TypeError, ValueError):
            shown = [row[c] for c in AVA_VOTE_COLUMNS]
            raise LabelFileError(f"{where}: vote counts must be numbers, got {shown}") from None
        _check_votes(counts, where)
        for column, key in AVA_TAG_COLUMNS.items():
            if column in row:
                extras.setdefault(key, []).append(_tag_id(row[column], where, column))
        ids.append(image_id)
        votes.append(counts)
        sources.append(f"{path}:{line}")
    if not ids:
        raise LabelFileError(f"{path}: no label rows below the header")
    return _vote_table(ids, votes, sources, extras)


def _tag_id(value: str | None, where: str, column: str) -> int:
    try:
        return int(float(value or 0))
    except ValueError:
        raise LabelFileError(
            f"{where}: column {column!r} must be a tag id, got {value!r}"
        ) from None


def read_ava_txt(path: str | Path) -> LabelTable:
    """Read the native ``AVA.txt``: every image of AVA, with tag and challenge ids in ``extras``.

    Each non-blank line holds 15 whole numbers separated by spaces: index, image id, the vote
    counts for ratings 1..10, tag 1, tag 2 (0 = none) and the challenge id.
    """
    path = Path(path)
    ids, votes, sources = [], [], []
    extras: dict[str, list] = {"tag1": [], "tag2": [], "challenge": []}
    with path.open() as handle:
        for line, text in enumerate(handle, start=1):
            fields = text.split()
            if not fields:
                continue
            where = f"{path}, line {line}"
            if len(fields) != AVA_TXT_FIELDS:
                raise LabelFileError(
                    f"{where}: expected {AVA_TXT_FIELDS} space-separated fields (index, image "
                    f"id, 10 vote counts, 2 tag ids, challenge id), got {len(fields)}: "
                    f"{text.strip()!r}"
                )
            try:
                numbers = [int(f) for f in fields[2:]]
            except ValueError:
                raise LabelFileError(
                    f"{where}: vote counts, tags and challenge must be whole numbers, got "
                    f"{text.strip()!r}"
                ) from None
            counts = [float(n) for n in numbers[:10]]
            _check_votes(counts, f"{where} (image {fields[1]!r})")
            ids.append(fields[1])
            votes.append(counts)
            sources.append(f"{path}:{line}")
            for key, value in zip(("tag1", "tag2", "challenge"), numbers[10:]):
                extras[key].append(value)
    if not ids:
        raise LabelFileError(f"{path}: no label rows")
    return _vote_table(ids, votes, sources, extras)


def read_id_list(path: str | Path) -> list[str]:
    """Image ids of an AVA ``.jpgl`` list: one id per line (a ``.jpg`` suffix is dropped)."""
    path = Path(path)
    with path.open() as handle:
        ids = [line.strip().removesuffix(".jpg") for line in handle]
    return [i for i in ids if i]


def read_id_names(path: str | Path) -> dict[int, str]:
    """AVA's ``tags.txt`` / ``challenges.txt``: lines ``<id> <name>`` (names may have spaces)."""
    path = Path(path)
    names = {}
    with path.open(newline="") as handle:
        for line, text in enumerate(handle, start=1):
            parts = text.strip().split(maxsplit=1)
            if not parts:
                continue
            if len(parts) != 2 or not parts[0].isdigit():
                raise LabelFileError(f"{path}, line {line}: expected '<id> <name>', got {text!r}")
            names[int(parts[0])] = parts[1]
    return names


class AVADataModule(FolderDataModule):
    """AVA (``dataset=ava``): 10-level vote distributions, accuracy threshold 5."""

    name = "ava"
    scale = AVA_SCALE
    layout_files = {"native": ("AVA.txt",), "elta_csv": ELTA_CSV_FILES}
    label_dir_candidates = ("", "AVA_dataset")
    image_dir_candidates = ("images", "image", "AVA_dataset/images", "AVA_dataset/image")

    def read_native(self) -> dict[str, LabelTable]:
        """All of ``AVA.txt``, split by the official test list; validation is carved later."""
        table = read_ava_txt(self.labels_dir / "AVA.txt")
        test_list = self.label_path(self.cfg.ava.test_list)
        if not test_list.is_file():
            raise LabelFileError(
                f"{test_list}: official AVA test list not found; set data.ava.test_list to the "
                "path of generic_test.jpgl (relative to the folder of AVA.txt)"
            )
        test_ids = set(read_id_list(test_list))
        in_test = np.asarray([i.removesuffix(".jpg") in test_ids for i in table.image_ids])
        unknown = len(test_ids) - int(in_test.sum())
        if unknown:
            log.warning("ava: %d ids of %s are not in AVA.txt (ignored)", unknown, test_list)
        splits = {"train": table.subset(np.flatnonzero(~in_test))}
        splits["test"] = table.subset(np.flatnonzero(in_test))
        return add_names(splits, self._name_maps())

    def read_elta_csv(self) -> dict[str, LabelTable]:
        splits = {s: read_ava_csv(self.labels_dir / f"{s}.csv") for s in ("train", "val", "test")}
        return add_names(splits, self._name_maps())

    def _name_maps(self) -> dict[str, dict[int, str]]:
        """Tag and challenge names by id (for ``tag1``, ``tag2``, ``challenge``), from the name
        files that exist; a missing file is logged and skipped (the files are optional)."""
        files = {"tag1": self.cfg.ava.tags, "tag2": self.cfg.ava.tags}
        files["challenge"] = self.cfg.ava.challenges
        maps = {}
        for key, file in files.items():
            if file is None:
                continue
            path = self.label_path(file)
            if path.is_file():
                maps[key] = read_id_names(path)
            else:
                log.info("ava: no %s, %s names not loaded", path, key)
        return maps


def add_names(
    splits: dict[str, LabelTable], maps: dict[str, dict[int, str]]
) -> dict[str, LabelTable]:
    """Add ``<key>_name`` extras (None for id 0 / unknown ids) next to the id extras."""
    for table in splits.values():
        for key, names in maps.items():
            if key in table.extras:
                table.extras[f"{key}_name"] = [names.get(i) for i in table.extras[key]]
    return splits
