"""AADB: a scalar score in [0, 1] per image, from the native lists or the ELTA CSV layout.

Native: ``imgList{Train,Validation,TestNew}Regression_score.txt``, one line
``<image file name> <score>`` (TestNew, not Test: it leaves out the bad images), plus the same
lists for the 11 attributes, loaded on request (``data.aadb.attributes``). ELTA:
``train.csv`` / ``val.csv`` / ``test.csv`` with ``image_id,score`` where score = AADB score x 10.
Images: ``datasetImages_originalSize/<name>``. Accuracy counts a score > 0.5 as high. Both
layouts' validation and test lists share images (127 in the ELTA files): setup warns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from elta_lightning.config import ConfigError
from elta_lightning.datamodules.folder import ELTA_CSV_FILES, FolderDataModule, read_score_csv
from elta_lightning.datamodules.labels import LabelFileError, LabelTable
from elta_lightning.scales import AADB_SCALE

AADB_ATTRIBUTES = (
    "BalacingElements",
    "ColorHarmony",
    "Content",
    "DoF",
    "Light",
    "MotionBlur",
    "Object",
    "Repetition",
    "RuleOfThirds",
    "Symmetry",
    "VividColor",
)
NATIVE_SPLITS = {"train": "Train", "val": "Validation", "test": "TestNew"}


def native_file(split: str, attribute: str = "score") -> str:
    """Name of AADB's label list of ``split`` for ``attribute`` (``score`` or an attribute)."""
    return f"imgList{NATIVE_SPLITS[split]}Regression_{attribute}.txt"


def read_aadb_list(path: str | Path) -> LabelTable:
    """One AADB label list: lines ``<image file name> <value>``; the value goes to ``scores``."""
    path = Path(path)
    ids, values, sources = [], [], []
    with path.open() as handle:
        for line, text in enumerate(handle, start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise LabelFileError(
                    f"{path}, line {line}: expected '<image file name> <value>', got {text!r}"
                )
            try:
                values.append(float(fields[1]))
            except ValueError:
                raise LabelFileError(
                    f"{path}, line {line} (image {fields[0]!r}): value must be a number, "
                    f"got {fields[1]!r}"
                ) from None
            ids.append(fields[0])
            sources.append(f"{path}:{line}")
    if not ids:
        raise LabelFileError(f"{path}: no label rows")
    return LabelTable(image_ids=ids, scores=np.asarray(values), sources=sources)


class AADBDataModule(FolderDataModule):
    """AADB (``dataset=aadb``): scalar score in [0, 1], accuracy threshold 0.5."""

    name = "aadb"
    scale = AADB_SCALE
    layout_files = {
        "native": tuple(native_file(split) for split in NATIVE_SPLITS),
        "elta_csv": ELTA_CSV_FILES,
    }
    label_dir_candidates = ("", "imgListFiles_label", "AADB_imgListFiles_label", "labels")
    image_dir_candidates = ("datasetImages_originalSize", "datasetImages_warp256", "images")

    def read_native(self) -> dict[str, LabelTable]:
        attributes = self._attributes()
        splits = {}
        for split in NATIVE_SPLITS:
            table = read_aadb_list(self.labels_dir / native_file(split))
            for attribute in attributes:
                path = self.labels_dir / native_file(split, attribute)
                table.extras[attribute] = _aligned(table, read_aadb_list(path), path)
            splits[split] = table
        return splits

    def read_elta_csv(self) -> dict[str, LabelTable]:
        if self.cfg.aadb.attributes:
            raise ConfigError(
                "data.aadb.attributes: the attribute lists exist in the native layout only; "
                f"the ELTA CSVs in {self.labels_dir} have none"
            )
        return {
            split: read_score_csv(self.labels_dir / f"{split}.csv", divide_by=10.0)
            for split in ("train", "val", "test")
        }

    def _attributes(self) -> list[str]:
        unknown = [a for a in self.cfg.aadb.attributes if a not in AADB_ATTRIBUTES]
        if unknown:
            raise ConfigError(
                f"data.aadb.attributes: unknown attribute(s) {unknown}; known (spelled as in "
                f"AADB's file names): {list(AADB_ATTRIBUTES)}"
            )
        return list(self.cfg.aadb.attributes)


def _aligned(table: LabelTable, attribute: LabelTable, path: Path) -> list[float]:
    """The attribute list's values in the row order of the score list; every image needed."""
    values = dict(zip(attribute.image_ids, attribute.scores.tolist()))
    missing = [k for k, image_id in enumerate(table.image_ids) if image_id not in values]
    if missing:
        k = missing[0]
        raise LabelFileError(
            f"{path}: no row for image "
            f"{table.image_ids[k]!r} (listed in {table.sources[k]}) and {len(missing) - 1} more"
        )
    return [values[image_id] for image_id in table.image_ids]
