"""``elta predict``: score every image of a folder with a trained checkpoint.

The images go through Lightning's predict loop (``IAAModule.predict_step``, as self-training's
pseudo-labelling does, see :func:`~elta_lightning.datamodules.unlabeled.predict_unlabeled`) on
one local device (accelerator ``auto``: a GPU where there is one); :class:`FolderScores`
collects index, score, the predicted vote shares of distribution models and the readable flag.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from elta_lightning.callbacks.predictions import GatherPredictions
from elta_lightning.checkpoints import load_checkpoint
from elta_lightning.datamodules.unlabeled import (
    IMAGE_SUFFIXES,
    list_images,
    predict_unlabeled,
    unreadable_report,
)
from elta_lightning.errors import EltaError
from elta_lightning.models.module import IAAModule

log = logging.getLogger(__name__)


class FolderScores(GatherPredictions):
    """Collects ``predict_step``'s ``score`` (native scale), ``dist`` (vote shares) for the
    distribution head, and the ``readable`` flags. After ``trainer.predict``, :attr:`table`
    holds them on the CPU, sorted by index (all processes' rows under DDP)."""

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[str, Tensor] = {}

    def columns(self, module: pl.LightningModule) -> list[str]:
        self.table = {}
        distribution = getattr(module, "head_kind", None) == "distribution"
        return ["score", *(["dist"] if distribution else [])]

    def on_predictions(self, module: pl.LightningModule, table: dict[str, Tensor]) -> None:
        self.table = {name: value.cpu() for name, value in table.items()}


def local_predict_trainer(callbacks: list[pl.Callback]) -> pl.Trainer:
    """A quiet Trainer for prediction on this machine: one device (GPU if any), float32, no
    logger, checkpoints, progress bar or model summary."""
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        num_nodes=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=callbacks,
    )


def predict_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 32,
    skip_unreadable: bool = False,
    num_workers: int = 0,
) -> str:
    """Write ``out`` (CSV: image, score on the native scale, score on 0..10, and the predicted
    vote shares for distribution models); return a one-line report. Unreadable images are all
    named in one error, or left out and counted with ``skip_unreadable``."""
    root = Path(images)
    if not root.is_dir():
        raise EltaError(f"--images: {root} is not a folder")
    if batch_size < 1:
        raise EltaError(f"--batch-size must be at least 1; got {batch_size}")
    files = list_images(root)
    if not files:
        raise EltaError(f"--images: no image files ({sorted(IMAGE_SUFFIXES)}) under {root}")
    module = load_checkpoint(checkpoint)
    scores = FolderScores()
    predict_unlabeled(local_predict_trainer([scores]), module, root, files, batch_size, num_workers)
    rows, unreadable = _rows(module, files, scores.table)
    if unreadable and not skip_unreadable:
        raise EltaError(
            f"{len(unreadable)} unreadable image(s): {unreadable_report(root, files, unreadable)}"
            ". Fix or remove them, or pass --skip-unreadable to leave them out (counted)"
        )
    header = ["image", "score", "score_common"]
    if module.head_kind == "distribution":
        header += [f"p_{level:g}" for level in module.scale.levels]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([[r[0], *(f"{v:.6f}" for v in r[1:])] for r in rows])
    if unreadable:
        log.warning(
            "left out %d unreadable file(s) of %d (--skip-unreadable)", len(unreadable), len(files)
        )
    skipped = len(unreadable)
    return f"scored {len(rows)} of {len(files)} images ({skipped} unreadable skipped) -> {out}"


def _rows(
    module: IAAModule, files: list[str], table: dict[str, Tensor]
) -> tuple[list[list[Any]], list[int]]:
    """CSV rows (file, score, score on 0..10, vote shares) of the readable images in file
    order, and the indices of the unreadable ones."""
    if len(table.get("index", ())) != len(files):
        raise EltaError(
            f"prediction ended with {len(table.get('index', ()))} of {len(files)} images"
        )
    index, readable, score = (table[k].tolist() for k in ("index", "readable", "score"))
    shares = table["dist"].tolist() if "dist" in table else [[]] * len(index)
    rows, unreadable = [], []
    for row, ok, value, share in zip(index, readable, score, shares):
        if ok:
            rows.append([files[row], value, value * module.scale.to_common, *share])
        else:
            unreadable.append(row)
    return rows, unreadable
