"""The shared IAA DataModule: read labels -> validate -> split -> transforms -> exact loaders."""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from elta_lightning.config import ConfigError, DataConfig, TransformConfig
from elta_lightning.datamodules import gpu_decode
from elta_lightning.datamodules.images import ImageDecodeError, load_rgb, load_rgb_array
from elta_lightning.datamodules.label_checks import bad_label_rows
from elta_lightning.datamodules.labels import LabelFileError, LabelTable
from elta_lightning.datamodules.transforms import (
    ImageTransform,
    InputNormaliser,
    channels_last_uint8,
    collate_images,
    normalisation,
    stack_images,
)
from elta_lightning.distributed import per_process_batch, per_process_eval_batch
from elta_lightning.scales import ScoreScale

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def build_transform(cfg: TransformConfig, train: bool, normalise: bool = True) -> ImageTransform:
    """The authors' pipeline: train = resize, random crop, flip; eval = resize to the crop size.

    Output: normalised float32 (3, S, S), or uint8 with ``normalise=False`` (the loaders'
    form when a Trainer drives them; see :mod:`elta_lightning.datamodules.transforms`)."""
    return ImageTransform.from_config(cfg, train, normalise)


def decode_for(transform: Any, path: Path, draft_size: int | None) -> Any:
    """``path`` decoded for ``transform``: uint8 pixels (3, H, W) through the fast JPEG path for
    our :class:`ImageTransform`, an RGB PIL image (:func:`load_rgb`) for any other callable."""
    if isinstance(transform, ImageTransform):
        return torch.from_numpy(load_rgb_array(path, draft_size)).permute(2, 0, 1)
    return load_rgb(path, draft_size)


@dataclass(frozen=True)
class LoaderSettings:
    """What a DataLoader of one process gets; see :func:`loader_settings`."""

    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    torch_threads: int | None  # CPU runs: intra-op threads of the main process; None: leave


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or container limit)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


#: Most loader workers per accelerator: enough for ~1000 full-size photos per second
#: (benchmarks/image_decode.py), few enough to keep the workers' memory in bounds.
MAX_WORKERS_PER_DEVICE = 16
#: CPU runs give one loader worker per this many cores (see :func:`loader_settings`).
CPU_CORES_PER_WORKER = 8
#: CPU runs on at most this many cores per process leave one core free of torch threads.
SMALL_CPU = 4


def loader_settings(
    requested: int | None,
    accelerator: str,
    processes_per_node: int = 1,
    cores: int | None = None,
    torch_threads: int | None = None,
) -> LoaderSettings:
    """Loader workers, pinned memory, persistent workers and (CPU) torch threads of a process.

    The rule (``requested`` = ``data.num_workers``; null = choose):

    - Accelerator runs (``gpu``/``cuda``, ``mps``, ...): each of the node's
      ``processes_per_node`` processes gets ``cores // processes_per_node - 1`` workers (one
      core left for the process that drives its device), at least 1 and at most
      :data:`MAX_WORKERS_PER_DEVICE`; CUDA batches are pinned (asynchronous copies) and the
      workers persist across epochs.
    - CPU runs: the model step runs in the main process on torch's intra-op threads and each
      worker decodes on a core of its own, so workers + threads stay within the process's
      share of the cores: oversubscribed OpenMP threads spin-wait for a descheduled sibling. A
      worker pays off only when loading is more than about 1/cores of a step, and on a CPU the
      model step dwarfs the JPEG work (``make train``: ~6 ms of loading in a ~200 ms step), so:
      no workers below :data:`CPU_CORES_PER_WORKER` cores per process, then one worker per that
      many cores. Torch threads: the remaining cores, less one on machines of at most
      :data:`SMALL_CPU` cores per process, left to everything else (measured on 2 shared cores
      with another job running: 2 threads took 2.2 s per ``make train`` step, 1 thread 0.19 s),
      and never more than ``torch_threads`` (the current setting, e.g. ``OMP_NUM_THREADS=1``).
      An explicit worker count keeps the thread rule.
    """
    cores = available_cores() if cores is None else cores
    per_process = max(1, cores // max(1, processes_per_node))
    if accelerator == "cpu":
        workers = per_process // CPU_CORES_PER_WORKER if requested is None else requested
        spare = 1 if per_process <= SMALL_CPU else 0
        threads = max(1, per_process - workers - spare)
        if torch_threads is not None:
            threads = min(threads, torch_threads)
        return LoaderSettings(workers, False, workers > 0, threads)
    if requested is None:
        workers = min(MAX_WORKERS_PER_DEVICE, max(1, per_process - 1))
    else:
        workers = requested
    pin = accelerator in ("gpu", "cuda")
    return LoaderSettings(workers, pin, workers > 0, None)


def trainer_accelerator(trainer: pl.Trainer | None) -> tuple[str, int]:
    """(``cpu``/``cuda``/``mps``/other, devices per node) of ``trainer``; without one, what this
    machine would use (CUDA when present)."""
    if trainer is None:
        return ("cuda" if torch.cuda.is_available() else "cpu"), 1
    kind = type(trainer.accelerator).__name__.lower()
    for name in ("cpu", "cuda", "mps"):
        if name in kind:
            return name, max(1, trainer.num_devices)
    return kind, max(1, trainer.num_devices)


def evaluation_sampler(
    dataset: Dataset, trainer: pl.Trainer | None, what: str
) -> UnrepeatedDistributedSampler | None:
    """Every item of ``dataset`` exactly once over the trainer's processes, in order, without
    padding (``UnrepeatedDistributedSampler``; None in a single process), so that metrics and
    predictions equal a one-process run. Each process needs at least one item: fewer items than
    processes is a :class:`ConfigError` naming ``what``."""
    world = trainer.world_size if trainer is not None else 1
    if world == 1:
        return None
    if len(dataset) < world:
        raise ConfigError(
            f"{what} has {len(dataset)} item(s), fewer than the {world} processes of this run: "
            "every process needs at least one; use fewer devices (trainer.devices)"
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False
    )


def make_loader(
    dataset: Dataset,
    batch_size: int,
    requested_workers: int | None,
    trainer: pl.Trainer | None,
    sampler: Any = None,
    shuffle: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with :func:`loader_settings`; on CPU runs driven by a Trainer it also sets
    torch's intra-op threads, so that loader workers and threads share the cores without
    oversubscribing them. A dataset whose transform is an :class:`ImageTransform` yields uint8
    images when a Trainer drives the loader (normalised on the device by the DataModule's
    ``on_after_batch_transfer``), normalised float otherwise."""
    accelerator, devices = trainer_accelerator(trainer)
    settings = loader_settings(
        requested_workers, accelerator, devices, None, torch.get_num_threads()
    )
    if trainer is not None and settings.torch_threads is not None:
        if settings.torch_threads < torch.get_num_threads():
            torch.set_num_threads(settings.torch_threads)
    transform = getattr(dataset, "transform", None)
    collate = None
    if isinstance(transform, ImageTransform):
        transform.normalise = trainer is None
        collate = collate_images
        if getattr(dataset, "decode", "cpu") == "gpu" and trainer is not None:
            collate = gpu_decode.GpuCollate(transform, getattr(dataset, "views", 0))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        drop_last=drop_last,
        num_workers=settings.num_workers,
        persistent_workers=settings.persistent_workers,
        pin_memory=settings.pin_memory,
        collate_fn=collate,
    )


class IAADataset(Dataset):
    """Images of one split with their labels; each item is a dict the modules understand.

    Keys: ``image`` (3, H, W) (normalised float32, or uint8 while a Trainer drives the loader:
    see :func:`make_loader`), ``score`` native mean score, ``dist`` (K,) vote shares when
    the data has them, ``weight`` per-sample loss weight (1 unless a method sets weights),
    ``index`` the row in this split (for exact evaluation and pseudo-label bookkeeping), and,
    with ``views > 0``, ``views`` (V, 3, H, W): V more independent draws of ``transform`` of the
    same decoded image (two-view methods such as ConR). ``row_dirs``: the image folder of each
    row, for rows from several folders (extra training rows); by default every id is relative
    to ``image_dir``. ``draft_size``: the smallest side the decoder may shrink a JPEG to (by
    default the transform's resize). ``decode="gpu"`` (``data.decode``): while a Trainer
    drives the loader, ordinary JPEGs are left to the device (:mod:`.gpu_decode`).
    """

    decode: str = "cpu"

    def __init__(
        self,
        table: LabelTable,
        image_dir: Path,
        transform: Any,
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
        if draft_size is None and isinstance(transform, ImageTransform):
            draft_size = transform.draft_size
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
        jpeg = None
        if self.decode == "gpu" and gpu_decode.decodes_on_device(self.transform):
            jpeg = gpu_decode.jpeg_item(path, self.transform, self.views)
        try:
            image = None if jpeg else decode_for(self.transform, path, self.draft_size)
        except ImageDecodeError as error:
            raise ImageDecodeError(f"{error} (label row {self.table.sources[index]})") from error
        item = jpeg or {"image": self.transform(image)}
        item["score"] = self.scores[index]
        item["weight"] = self.weights[index]
        item["index"] = torch.tensor(index, dtype=torch.long)
        if self.dists is not None:
            item["dist"] = self.dists[index]
        if self.views and not jpeg:
            views = [self.transform(image) for _ in range(self.views)]
            if channels_last_uint8(views[0]):
                item["views"] = stack_images(views, shared=False)
            else:
                item["views"] = torch.stack(views)
        return item


def check_labels(table: LabelTable, scale: ScoreScale, split: str) -> None:
    """Reject rows a model must never see (the rules of :func:`bad_label_rows`): NaN or
    out-of-range scores, ids that leave the image folder, duplicate ids; and distributions with
    another number of levels than the scale. Stops at the first rule broken; its error names the
    file and line of the first offending rows."""
    bad = bad_label_rows(table, scale)

    def fail_if_any(rows: np.ndarray, what: str) -> None:
        if not rows.size:
            return
        shown = ", ".join(f"{table.sources[i]} ({table.image_ids[i]!r})" for i in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        raise LabelFileError(f"{split} split: {len(rows)} row(s) {what}: {shown}{more}")

    fail_if_any(bad.not_finite, "with a score that is not a finite number")
    fail_if_any(bad.out_of_range, f"with a score outside [{scale.minimum}, {scale.maximum}]")
    if table.distributions is not None and scale.has_levels:
        if table.distributions.shape[1] != scale.num_levels:
            raise LabelFileError(
                f"{split} split: distributions have {table.distributions.shape[1]} levels, "
                f"the scale has {scale.num_levels}"
            )
    fail_if_any(bad.unsafe_id, "whose image id is empty or leaves the image folder")
    # one row per duplicated id: the first row that has it
    fail_if_any(np.unique(bad.first_of[bad.repeated]), "whose image id appears more than once")


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
        self.decode = getattr(cfg, "decode", "cpu")  # configs saved before data.decode: cpu
        gpu_decode.check_decode(self.decode)
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
        for split in ("val", "test"):  # each decodes JPEGs straight to its own resize
            transform = build_transform(self.cfg.transforms, train=False)
            self.datasets[split] = IAADataset(tables[split], self.image_dir, transform)
            self.datasets[split].decode = self.decode
        train, row_dirs = tables["train"], None
        if self.extra_train:  # e.g. pseudo-labels, each block with its own image folder
            train = LabelTable.concat([train, *(table for table, _ in self.extra_train)])
            row_dirs = [self.image_dir] * len(tables["train"])
            row_dirs += [folder for table, folder in self.extra_train for _ in range(len(table))]
        transform = build_transform(self.cfg.transforms, train=True)
        self.datasets["train"] = IAADataset(
            train, self.image_dir, transform, None, row_dirs, views=self.train_views
        )
        self.datasets["train"].decode = self.decode

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
        return make_loader(
            dataset,
            batch_size,
            self.cfg.num_workers,
            self.trainer,
            sampler=sampler,
            shuffle=shuffle,
            drop_last=drop_last,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 ``image``/``views`` -> normalised float32, on the device the batch is on
        (``data.decode=gpu``: its JPEGs decoded there first, :func:`.gpu_decode.decode_batch`)."""
        if not hasattr(self, "_normaliser"):
            self._normaliser = InputNormaliser(*normalisation(self.cfg.transforms))
        return self._normaliser(gpu_decode.decode_batch(batch))

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        world, rank = self._world()
        sampler = None
        if world > 1:  # shuffled by the run's seed (seed_everything), the same on every rank
            seed = torch.initial_seed()
            sampler = DistributedSampler(
                dataset, world, rank, shuffle=True, seed=seed, drop_last=True
            )
        batch = per_process_batch(self.cfg.batch_size, world)
        return self._loader(dataset, batch, sampler, shuffle=True, drop_last=True)

    def eval_loader(self, dataset: Dataset, what: str = "the evaluation set") -> DataLoader:
        """A loader that covers ``dataset`` exactly once over all processes, in order."""
        world, _ = self._world()
        sampler = evaluation_sampler(dataset, self.trainer, what)
        global_batch = self.cfg.eval_batch_size or 2 * self.cfg.batch_size  # no gradients: larger
        batch = per_process_eval_batch(global_batch, world)
        return self._loader(dataset, batch, sampler, shuffle=False, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["val"], f"the {self.name} val split")

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["test"], f"the {self.name} test split")
