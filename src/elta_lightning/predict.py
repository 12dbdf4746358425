"""``elta predict``: score every image of a folder with a trained checkpoint."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from elta_lightning.datamodules.unlabeled import (
    IMAGE_SUFFIXES,
    UnlabeledImages,
    list_images,
    unreadable_report,
)
from elta_lightning.errors import EltaError
from elta_lightning.run import load_checkpoint

log = logging.getLogger(__name__)


@torch.inference_mode()
def predict_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 32,
    skip_unreadable: bool = False,
) -> str:
    """Write ``out`` (CSV: image, score on the native scale, score on 0..10, and the predicted
    vote shares for distribution models); return a one-line report. Unreadable images are all
    named in one error, or left out and counted with ``skip_unreadable``."""
    root = Path(images)
    if not root.is_dir():
        raise EltaError(f"--images: {root} is not a folder")
    files = list_images(root)
    if not files:
        raise EltaError(f"--images: no image files ({sorted(IMAGE_SUFFIXES)}) under {root}")
    module = load_checkpoint(checkpoint).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    loader = DataLoader(UnlabeledImages(root, files, module.cfg.data.transforms), batch_size)
    rows, unreadable = [], []
    for batch in loader:
        scores, probs = module.predict_scores(batch["image"].to(device))
        shares = [[]] * len(scores) if probs is None else probs.cpu().tolist()
        found = zip(batch["index"].tolist(), batch["readable"].tolist(), scores.cpu().tolist())
        for (index, readable, score), share in zip(found, shares):
            if readable:
                rows.append([files[index], score, score * module.scale.to_common, *share])
            else:
                unreadable.append(index)
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
