"""Images without labels (a folder, a file list): what `elta predict` scores and what
`elta self-train` pseudo-labels. Every file is predicted once; an undecodable one becomes a
blank placeholder flagged ``readable=False``, so all of them can be named (or counted and left
out) after one pass, instead of the first one stopping a long prediction."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from elta_lightning.datamodules.base import build_transform
from elta_lightning.datamodules.images import ImageDecodeError, load_rgb

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, by suffix), as sorted paths relative to it."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


class UnlabeledImages(Dataset):
    """Eval-transformed images ``root / files[i]``; items: ``image``, ``index``, ``readable``."""

    def __init__(self, root: Path, files: list[str], transforms: Any) -> None:
        self.root = root
        self.files = files
        self.transform = build_transform(transforms, train=False)
        self.size = transforms.eval_resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, readable = load_rgb(self.root / self.files[index], self.size), True
        except ImageDecodeError:
            image, readable = Image.new("RGB", (self.size, self.size)), False
        return {"image": self.transform(image), "index": index, "readable": readable}


def unreadable_report(root: Path, files: list[str], rows: Iterable[int], limit: int = 5) -> str:
    """The first ``limit`` unreadable files with the reason (decoded again for the message)."""
    rows = list(rows)
    reasons = []
    for row in rows[:limit]:
        try:
            load_rgb(root / files[row])
            reasons.append(f"{files[row]} (unreadable while predicting)")
        except ImageDecodeError as error:
            reasons.append(str(error))
    more = f"; and {len(rows) - limit} more" if len(rows) > limit else ""
    return "; ".join(reasons) + more
