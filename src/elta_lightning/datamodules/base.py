"""The shared IAA DataModule: read labels -> validate -> split -> transforms -> exact loaders."""

from __future__ import annotations

import logging
from abc import abstractmethod
from pathlib import Path, PurePosixPath

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from elta_lightning.config import DataConfig, TransformConfig
from elta_lightning.datamodules.images import ImageDecodeError, load_rgb
from elta_lightning.datamodules.labels import LabelFileError, LabelTable
from elta_lightning.models.backbone import IMAGENET_MEAN, IMAGENET_STD
from elta_lightning.scales import ScoreScale

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def normalisation(cfg: TransformConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input normalisation: the config's, or ImageNet's where unset
    (``load_config`` fills them in from the backbone's pretrained config)."""
    mean = IMAGENET_MEAN if cfg.mean is None else tuple(cfg.mean)
    std = IMAGENET_STD if cfg.std is None else tuple(cfg.std)
    return mean, std


def build_transform(cfg: TransformConfig, train: bool) -> v2.Compose:
    """The authors' pipeline: train = resize, random crop, flip; eval = resize to the crop size."""
    steps: list[torch.nn.Module] = [v2.ToImage()]
    if train:
        steps += [v2.Resize((cfg.train_resize, cfg.train_resize), antialias=True)]
        steps += [v2.RandomCrop(cfg.crop)]
        if cfg.hflip:
            steps += [v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize((cfg.eval_resize, cfg.eval_resize), antialias=True)]
    mean, std = normalisation(cfg)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


class IAADataset(Dataset):
    """Images of one split with their labels; each item is a dict the modules understand.

    Keys: ``image`` (3, H, W) float, ``score`` native mean score, ``dist`` (K,) vote shares when
    the data has them, ``weight`` per-sample loss weight (1 unless a method sets weights),
    ``index`` the row in this split (for exact evaluation and pseudo-label bookkeeping), and,
    with ``views > 0``, ``views`` (V, 3, H, W): V more independent draws of ``transform`` of the
    same decoded image (two-view methods such as ConR). ``row_dirs``: the image folder of each
    row, for rows from several folders (extra training rows); by default every id is relative
    to ``image_dir``.
    """

    def __init__(
        self,
        table: LabelTable,
        image_dir: Path,
        transform: v2.Compose,
        draft_size: int | None = None,
        row_dirs: list[Path] | None = None,
        views: int = 0,
    ) -> None:
        if row_dirs is not None and len(row_dirs) != len(table):
            raise ValueError(f"row_dirs must have {len(table)} entries, got {len(row_dirs)}")
        self.table = table
        self.image_dir = image_dir
        self.row_dirs = row_dirs
        self.transform = transform
        self.draft_size = draft_size
        self.views = views
        self.scores = torch.as_tensor(table.scores, dtype=torch.float32)
        self.dists = (
            None
            if table.distributions is None
            else torch.as_tensor(table.distributions, dtype=torch.float32)
        )
        self.weights = torch.ones(len(table), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        folder = self.image_dir if self.row_dirs is None else self.row_dirs[index]
        path = folder / self.table.image_ids[index]
        try:
            image = load_rgb(path, self.draft_size)
        except ImageDecodeError as error:
            raise ImageDecodeError(f"{error} (label row {self.table.sources[index]})") from error
        item = {
            "image": self.transform(image),
            "score": self.scores[index],
            "weight": self.weights[index],
            "index": torch.tensor(index, dtype=torch.long),
        }
        if self.dists is not None:
            item["dist"] = self.dists[index]
        if self.views:
            item["views"] = torch.stack([self.transform(image) for _ in range(self.views)])
        return item


def check_labels(table: LabelTable, scale: ScoreScale, split: str) -> None:
    """Reject rows a model must never see: NaN or out-of-range scores, duplicate ids, ids that
    leave the image folder. Errors name the file and line of the first offending rows."""

    def fail(rows: np.ndarray, what: str) -> None:
        shown = ", ".join(f"{table.sources[i]} ({table.image_ids[i]!r})" for i in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise LabelFileError(f"{split} split: {len(rows)} row(s) {what}: {shown}{more}")

    bad = np.flatnonzero(~np.isfinite(table.scores))
    if bad.size:
        fail(bad, "with a score that is not a finite number")
    bad = np.flatnonzero((table.scores < scale.minimum) | (table.scores > scale.maximum))
    if bad.size:
        fail(bad, f"with a score outside [{scale.minimum}, {scale.maximum}]")
    if table.distributions is not None and scale.has_levels:
        if table.distributions.shape[1] != scale.num_levels:
            raise LabelFileError(
                f"{split} split: distributions have {table.distributions.shape[1]} levels, "
                f"the scale has {scale.num_levels}"
            )
    leaving = [
        i
        for i, name in enumerate(table.image_ids)
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or not name
    ]
    if leaving:
        fail(np.asarray(leaving), "whose image id is empty or leaves the image folder")
    _, first, counts = np.unique(table.image_ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        fail(np.sort(first[counts > 1]), "whose image id appears more than once")


def split_overlap_warnings(tables: dict[str, LabelTable]) -> list[str]:
    """Messages for splits that share images (selecting a model on test images, leaking)."""
    ids = {split: set(table.image_ids) for split, table in tables.items()}
    fix = "set data.val_split=carve to carve the validation split from train instead"
    messages = []
    for first, second in (("val", "test"), ("train", "test"), ("train", "val")):
        shared = ids[first] & ids[second]
        if not shared:
            continue
        examples = ", ".join(sorted(shared)[:3])
        if first == "val" and ids["val"] == ids["test"]:
            messages.append(
                f"the validation split is the test split ({len(shared)} images): checkpoint "
                f"selection and early stopping will use the test set; {fix}"
            )
        elif first == "val":
            messages.append(
                f"the validation and test splits share {len(shared)} images (e.g. {examples}): "
                f"model selection sees part of the test set; {fix}"
            )
        else:
            messages.append(
                f"the {first} and {second} splits share {len(shared)} images (e.g. {examples}): "
                f"scores on {second} are optimistic"
            )
    return messages


class IAADataModule(pl.LightningDataModule):
    """Shared pipeline of every IAA data set.

    Subclasses say where labels and images are (:meth:`read_splits`, :attr:`image_dir`) and
    which :class:`ScoreScale` the data uses. Evaluation loaders never pad or drop samples, so
    metrics cover the whole set exactly once on any number of processes; the train loader drops
    the last incomplete batch (batch-level methods need at least two samples).
    """

    name: str = "iaa"
    scale: ScoreScale

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tables: dict[str, LabelTable] = {}
        self.datasets: dict[str, IAADataset] = {}
        self.skipped: dict[str, int] = {}
        self.split_warnings: list[str] = []
        self.extra_train: list[tuple[LabelTable, Path]] = []
        #: extra augmented views of each training image (set before setup by parts that need
        #: them, e.g. ConR: 2)
        self.train_views = 0

    @property
    @abstractmethod
    def image_dir(self) -> Path:
        """Folder that image ids are relative to."""

    @abstractmethod
    def read_splits(self) -> dict[str, LabelTable]:
        """Labels of the train, val and test splits."""

    @property
    def has_distribution(self) -> bool:
        return self.scale.has_levels

    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        tables = self.read_splits()
        for split in SPLITS:
            if split not in tables or len(tables[split]) == 0:
                raise LabelFileError(f"{self.name}: the {split} split is empty")
            check_labels(tables[split], self.scale, split)
            tables[split] = self._check_images(tables[split], split)
        self.tables = tables
        self.split_warnings = split_overlap_warnings(tables)
        for message in self.split_warnings:
            log.warning("%s: %s", self.name, message)
        draft = max(self.cfg.transforms.train_resize, self.cfg.transforms.eval_resize)
        for split in ("val", "test"):
            transform = build_transform(self.cfg.transforms, train=False)
            self.datasets[split] = IAADataset(tables[split], self.image_dir, transform, draft)
        train, row_dirs = tables["train"], None
        if self.extra_train:  # e.g. pseudo-labels, each block with its own image folder
            train = LabelTable.concat([train, *(table for table, _ in self.extra_train)])
            row_dirs = [self.image_dir] * len(tables["train"])
            row_dirs += [folder for table, folder in self.extra_train for _ in range(len(table))]
        transform = build_transform(self.cfg.transforms, train=True)
        self.datasets["train"] = IAADataset(
            train, self.image_dir, transform, draft, row_dirs, views=self.train_views
        )

    def add_training_rows(self, table: LabelTable, image_dir: Path) -> None:
        """Extra labelled rows for the train loader only, e.g. the pseudo-labels of a
        self-training round; ids are relative to ``image_dir``. Call before :meth:`setup`.

        The rows are checked like a split (finite scores in the scale's range, distributions
        over the scale's levels, ids inside their folder, images present) and appended after
        the training rows in ``datasets["train"]``. ``tables["train"]`` and :meth:`train_scores`
        keep the ground-truth training labels only, so region cuts and label statistics do not
        depend on pseudo-labels.
        """
        if self.tables:
            raise RuntimeError("add_training_rows must be called before setup()")
        what = f"extra training rows ({image_dir})"
        if (table.distributions is not None) != self.has_distribution:
            need = "vote distributions" if self.has_distribution else "scalar scores only"
            raise LabelFileError(f"{what}: the {self.name} data set needs {need}")
        check_labels(table, self.scale, what)
        missing = [k for k, i in enumerate(table.image_ids) if not (image_dir / i).is_file()]
        if missing:
            shown = ", ".join(f"{table.image_ids[k]} ({table.sources[k]})" for k in missing[:5])
            raise ImageDecodeError(f"{what}: {len(missing)} image(s) not found: {shown}")
        self.extra_train.append((table, Path(image_dir)))

    def _check_images(self, table: LabelTable, split: str) -> LabelTable:
        """Every row's image file must exist (a stat per file, no decoding)."""
        present = np.array([(self.image_dir / i).is_file() for i in table.image_ids], dtype=bool)
        missing = np.flatnonzero(~present)
        shown = ", ".join(f"{table.image_ids[i]} ({table.sources[i]})" for i in missing[:5])
        return self.leave_out(table, split, missing, f"not found under {self.image_dir}", shown)

    def leave_out(
        self, table: LabelTable, split: str, bad: np.ndarray, problem: str, shown: str
    ) -> LabelTable:
        """Rows ``bad`` have an unusable image (``problem``; ``shown`` names the first ones):
        stop with their names, or, with ``data.skip_missing_images``, leave them out, counted
        in :attr:`skipped` (and the run notes) and logged."""
        if bad.size == 0:
            return table
        more = " ..." if bad.size > 5 else ""
        if not self.cfg.skip_missing_images:
            raise ImageDecodeError(
                f"{split} split: {bad.size} image(s) {problem}: {shown}{more}. Fix them, or set "
                "data.skip_missing_images=true to leave them out (counted and reported)."
            )
        self.skipped[split] = int(bad.size)
        log.warning(
            "%s split: skipping %d of %d rows whose image is %s (data.skip_missing_images): %s%s",
            split,
            bad.size,
            len(table),
            problem,
            shown,
            more,
        )
        return table.subset(np.setdiff1d(np.arange(len(table)), bad))

    def train_scores(self) -> torch.Tensor:
        """Mean scores of the training split (for tail regions and label statistics)."""
        return torch.as_tensor(self.tables["train"].scores, dtype=torch.float32)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset: Dataset, batch_size: int, sampler, shuffle: bool, drop_last: bool):
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle if sampler is None else False,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        world, rank = self._world()
        sampler = None
        if world > 1:  # shuffled by the run's seed (seed_everything), the same on every rank
            seed = torch.initial_seed()
            sampler = DistributedSampler(
                dataset, world, rank, shuffle=True, seed=seed, drop_last=True
            )
        return self._loader(dataset, self.cfg.batch_size, sampler, shuffle=True, drop_last=True)

    def eval_loader(self, dataset: Dataset) -> DataLoader:
        """A loader that covers ``dataset`` exactly once over all processes, in order."""
        world, rank = self._world()
        sampler = None
        if world > 1:
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=world, rank=rank, shuffle=False
            )
        batch = self.cfg.eval_batch_size or self.cfg.batch_size
        return self._loader(dataset, batch, sampler, shuffle=False, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["val"])

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["test"])
