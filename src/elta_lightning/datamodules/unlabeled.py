"""Images without labels (a folder, a file list): what `elta predict` scores and what
`elta self-train` pseudo-labels. Every file is predicted once; an undecodable one becomes a
blank placeholder flagged ``readable=False``, so all of them can be named (or counted and left
out) after one pass, instead of the first one stopping a long prediction.

:func:`predict_unlabeled` runs ``trainer.predict`` (``IAAModule.predict_step``) over such images
for both commands; the trainer's callbacks collect the outputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from elta_lightning.datamodules.base import (
    build_transform,
    decode_for,
    evaluation_sampler,
    make_loader,
)
from elta_lightning.datamodules.images import ImageDecodeError, load_rgb

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively, by suffix), as sorted paths relative to it."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


class UnlabeledImages(Dataset):
    """Eval-transformed images ``root / files[i]`` (the training data's fast path: JPEGs decoded
    straight to the eval size; uint8 while a Trainer drives the loader, normalised on the
    device, as :class:`~elta_lightning.datamodules.base.IAADataset`); items: ``image``,
    ``index``, ``readable``."""

    def __init__(self, root: Path, files: list[str], transforms: Any) -> None:
        self.root = root
        self.files = files
        self.transform = build_transform(transforms, train=False)
        self.size = transforms.eval_resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image = decode_for(self.transform, self.root / self.files[index], self.size)
            readable = True
        except ImageDecodeError:
            image, readable = torch.zeros((3, self.size, self.size), dtype=torch.uint8), False
        return {"image": self.transform(image), "index": index, "readable": readable}


class UnlabeledDataModule(pl.LightningDataModule):
    """The predict loader: every image exactly once over all processes, in order (without
    padding: ``UnrepeatedDistributedSampler`` under DDP)."""

    def __init__(
        self, dataset: UnlabeledImages, batch_size: int, num_workers: int | None = 0
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers  # None: base.loader_settings' rule
        self._normaliser = dataset.transform.normaliser()

    def predict_dataloader(self) -> DataLoader:
        what = f"the image set under {self.dataset.root}"
        sampler = evaluation_sampler(self.dataset, self.trainer, what)
        return make_loader(self.dataset, self.batch_size, self.num_workers, self.trainer, sampler)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images -> normalised float32, on the device the batch is on."""
        return self._normaliser(batch)


def predict_unlabeled(
    trainer: pl.Trainer,
    module: IAAModule,
    root: Path,
    files: list[str],
    batch_size: int,
    num_workers: int | None = 0,
) -> None:
    """``trainer.predict`` of ``module`` over the images ``root / files`` (the module's own eval
    transform; every image once over all processes). Nothing is returned
    (``return_predictions=False``): the trainer's callbacks collect what ``predict_step`` gives
    (``index``, ``score``, and ``dist`` / ``logits`` for the distribution head) together with
    the batches' ``readable`` flags. The trainer should not replace our sampler
    (``use_distributed_sampler=False``)."""
    dataset = UnlabeledImages(root, files, module.cfg.data.transforms)
    data = UnlabeledDataModule(dataset, batch_size, num_workers)
    trainer.predict(module, datamodule=data, return_predictions=False)


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
