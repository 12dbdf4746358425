"""TAD66K: a scalar mean rating on 1..10 per image, with its theme (47 themes).

Native (the authors' label archive): ``merge/train.csv`` and ``merge/test.csv`` with header
``image,score`` (the standard split; validation is carved from train), and
``unmerge/{train,test}/<theme>.csv`` giving each image's theme. ELTA: ``train.csv`` /
``val.csv`` / ``test.csv`` with ``image_id,score``; its val.csv is a copy of test.csv (setup
warns; ``data.val_split=carve`` avoids it). The theme of each row is stored in
``LabelTable.extras["theme"]`` (None when unknown) for per-theme SRCC; it is read from the
per-theme folder in both layouts when that folder is there. Accuracy counts a score > 5 as high.
"""

from __future__ import annotations

import logging
from pathlib import Path

from elta_lightning.datamodules.folder import (
    ELTA_CSV_FILES,
    FolderDataModule,
    read_csv_rows,
    read_score_csv,
)
from elta_lightning.datamodules.labels import LabelTable
from elta_lightning.scales import TAD66K_SCALE

log = logging.getLogger(__name__)

THEME_KEY = "theme"


def read_themes(folder: str | Path) -> dict[str, str]:
    """Image name -> theme, from every ``<theme>.csv`` (column ``image``) below ``folder``.

    The authors' files put each image in one theme; should an image appear in several, the
    first file in sorted path order wins and the conflicts are logged.
    """
    themes: dict[str, str] = {}
    conflicts = 0
    for path in sorted(Path(folder).rglob("*.csv")):
        for _, row in read_csv_rows(path, ("image",)):
            name = (row["image"] or "").strip()
            if themes.setdefault(name, path.stem) != path.stem:
                conflicts += 1
    if conflicts:
        log.warning("tad66k: %d images listed under several themes in %s", conflicts, folder)
    return themes


class TAD66KDataModule(FolderDataModule):
    """TAD66K (``dataset=tad66k``): scalar score on 1..10, accuracy threshold 5, themes."""

    name = "tad66k"
    scale = TAD66K_SCALE
    layout_files = {"native": ("merge/train.csv", "merge/test.csv"), "elta_csv": ELTA_CSV_FILES}
    label_dir_candidates = ("", "labels", "label")
    image_dir_candidates = ("images", "imgs", "image")

    def read_native(self) -> dict[str, LabelTable]:
        splits = {
            split: read_score_csv(self.labels_dir / "merge" / f"{split}.csv", id_column="image")
            for split in ("train", "test")
        }
        return self._with_themes(splits)

    def read_elta_csv(self) -> dict[str, LabelTable]:
        splits = {
            split: read_score_csv(self.labels_dir / f"{split}.csv")
            for split in ("train", "val", "test")
        }
        return self._with_themes(splits)

    def _with_themes(self, splits: dict[str, LabelTable]) -> dict[str, LabelTable]:
        """Set ``extras["theme"]`` from the per-theme folder (``data.tad66k.themes``)."""
        if self.cfg.tad66k.themes is None:
            return splits
        folder = self.label_path(self.cfg.tad66k.themes)
        if not folder.is_dir():
            log.warning(
                "tad66k: no theme folder %s: no per-theme report (set data.tad66k.themes to the "
                "folder of <theme>.csv files, or null to silence this)",
                folder,
            )
            return splits
        themes = read_themes(folder)
        for split, table in splits.items():
            table.extras[THEME_KEY] = [themes.get(i) for i in table.image_ids]
            unknown = sum(theme is None for theme in table.extras[THEME_KEY])
            if unknown:
                log.info("tad66k: %d %s images have no theme in %s", unknown, split, folder)
        return splits
