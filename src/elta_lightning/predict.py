"""``elta predict``: score every image of a folder with a trained checkpoint."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from elta_lightning.datamodules.base import build_transform
from elta_lightning.datamodules.images import ImageDecodeError, load_rgb
from elta_lightning.errors import EltaError
from elta_lightning.run import load_checkpoint

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, by suffix), in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EltaError(f"--images: {folder} is not a folder")
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise EltaError(f"--images: no image files ({sorted(IMAGE_SUFFIXES)}) under {folder}")
    return files


class FolderImages(Dataset):
    """Decoded, eval-transformed images; unreadable files become ``None`` when skipping."""

    def __init__(
        self, files: list[Path], transform, skip_unreadable: bool, draft_size: int | None = None
    ) -> None:
        self.files = files
        self.transform = transform
        self.skip_unreadable = skip_unreadable
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            image = load_rgb(self.files[index], self.draft_size)
        except ImageDecodeError as error:
            if self.skip_unreadable:
                log.warning("skipping unreadable image: %s", error)
                return None
            raise
        return {"image": self.transform(image), "index": index}


def _collate(items: list) -> dict[str, torch.Tensor] | None:
    items = [i for i in items if i is not None]
    if not items:
        return None
    return torch.utils.data.default_collate(items)


@torch.inference_mode()
def predict_folder(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    batch_size: int = 32,
    skip_unreadable: bool = False,
) -> str:
    """Write ``out`` (CSV: image, score on the native scale, score on 0..10, and the predicted
    vote shares for distribution models); return a one-line report."""
    module = load_checkpoint(checkpoint).eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    files = list_images(images)
    transforms = module.cfg.data.transforms
    dataset = FolderImages(
        files, build_transform(transforms, train=False), skip_unreadable, transforms.eval_resize
    )
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_collate)
    rows: list[list] = []
    for batch in loader:
        if batch is None:
            continue
        scores, probs = module.predict_scores(batch["image"].to(device))
        shares = [[]] * len(scores) if probs is None else probs.cpu().tolist()
        for index, score, share in zip(batch["index"].tolist(), scores.cpu().tolist(), shares):
            name = str(files[index].relative_to(images))
            rows.append([name, score, score * module.scale.to_common, *share])
    header = ["image", "score", "score_common"]
    if module.head_kind == "distribution":
        header += [f"p_{level:g}" for level in module.scale.levels]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([[r[0], *(f"{v:.6f}" for v in r[1:])] for r in rows])
    skipped = len(files) - len(rows)
    if skipped:
        log.warning("skipped %d unreadable file(s) of %d (--skip-unreadable)", skipped, len(files))
    return f"scored {len(rows)} of {len(files)} images ({skipped} unreadable skipped) -> {out}"
