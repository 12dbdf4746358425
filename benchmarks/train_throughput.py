"""Training images per second: `elta train`'s real loop against a plain PyTorch loop.

Both loops train the same model (the config's timm backbone and head, built by
``run.build_module``), with the same batch size, optimiser (the config's, e.g. Adam), loader
worker count, torch threads and precision, on the same folder of JPEGs:

- ``elta``: the Lightning Trainer of ``run.build_trainer``, our DataModule (the shared
  :class:`IAADataModule` over the folder: fast JPEG path, uint8 batches normalised on the
  device) and :class:`IAAModule` with the method's parts (``vanilla``: none; ``elta``: TFA +
  FLSA); loaded with ``load_config`` like ``elta train``;
- ``plain``: a hand-written loop: ``Image.open().convert("RGB")``, torchvision's ``Resize``,
  ``RandomCrop``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, a ``DataLoader``, then
  forward, EMD loss against the vote distribution, backward, step.

Each step is split into the wait for data (everything between two steps: loading, the copy
to the device, the loop's own work) and compute (forward, loss, backward, optimiser step; on a
GPU the timer synchronises at the end of each step so that the split is exact). The first
``--warmup`` steps are left out; each loop's peak memory (GPU: allocated from its start; CPU:
the process's resident set so far) is kept too (``gpu_check.py`` reports it). CPU always
(unless ``--gpu-only``: large backbones); on a CUDA GPU also fp32 and bf16-mixed. GPU check,
e.g.: ``python benchmarks/train_throughput.py --gpu-only --backbone swinv2_base_window8_256
--batch 64 --count 64 --steps 20 --warmup 5 --out throughput_gpu.md``; ``gpu_check.py`` runs
these loops (vanilla and ELTA, with the wait share and peak memory) after a DDP job over all
GPUs.

The JPEGs: ``--images DIR`` (any folder of JPEGs), or ``--count`` files of ``--size`` cut from
real photos (see ``image_decode.source_photos``), repeated through links to fill the steps; or
``--dataset NAME``: a configured data set's training split with its YAML's settings (e.g.
``--dataset synthetic``: what ``make train`` loads). ``--workers 0,2,auto`` compares loader
worker counts (``auto``: ``data.num_workers=null``, the rule of
``datamodules.base.loader_settings``). The markdown table is printed and written to ``--out``.
Example (a minute on 2 cores):
``python benchmarks/train_throughput.py --size 800x600 --steps 8 --out throughput.md``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parent))  # image_decode, beside this file

from image_decode import source_photos, write_photos  # noqa: E402

from elta_lightning.callbacks.resources import peak_memory_mb  # noqa: E402
from elta_lightning.config import load_config  # noqa: E402
from elta_lightning.datamodules import build_datamodule  # noqa: E402
from elta_lightning.datamodules.base import (  # noqa: E402
    IAADataModule,
    available_cores,
    loader_settings,
)
from elta_lightning.datamodules.labels import LabelTable  # noqa: E402
from elta_lightning.datamodules.transforms import normalisation  # noqa: E402
from elta_lightning.losses import emd_per_sample  # noqa: E402
from elta_lightning.parts import views_needed  # noqa: E402
from elta_lightning.run import build_module, build_trainer  # noqa: E402
from elta_lightning.scales import AVA_SCALE  # noqa: E402

HELD_OUT = 4  # images kept out of train for the (unused) val and test splits
#: Settings of the folder runs where no option is given (``--dataset`` runs use the YAML's).
DEFAULTS = {"backbone": "test_convnext", "batch": 16, "resize": 300, "crop": 256}


def vote_table(ids: list[str], seed: int) -> LabelTable:
    """AVA-style labels for ``ids``: seeded vote distributions over 1..10 and their means."""
    rng = np.random.default_rng(seed)
    dists = rng.dirichlet(np.full(AVA_SCALE.num_levels, 2.0), size=len(ids))
    scores = dists @ np.asarray(AVA_SCALE.levels)
    return LabelTable(ids, scores, dists, [f"drawn:{k}" for k in range(len(ids))])


class FolderData(IAADataModule):
    """Our shared DataModule over a flat folder of JPEGs with drawn AVA-style votes."""

    name = "bench"
    scale = AVA_SCALE

    def __init__(self, cfg, folder: Path) -> None:
        super().__init__(cfg)
        self.folder = folder

    @property
    def image_dir(self) -> Path:
        return self.folder

    def read_splits(self) -> dict[str, LabelTable]:
        table = vote_table(sorted(p.name for p in self.folder.glob("*.jp*g")), seed=0)
        rows = np.arange(len(table))
        return {
            "train": table.subset(rows[:-HELD_OUT]),
            "val": table.subset(rows[-HELD_OUT : -HELD_OUT // 2]),
            "test": table.subset(rows[-HELD_OUT // 2 :]),
        }


class PlainImages(Dataset):
    """The plain pipeline: PIL decode at full size, torchvision v1 transforms, float images."""

    def __init__(self, paths: list[Path], dists: np.ndarray, resize: int, crop: int, norm) -> None:
        self.paths = paths
        self.dists = torch.as_tensor(dists, dtype=torch.float32)
        mean, std = norm
        self.transform = T.Compose(
            [
                T.Resize((resize, resize)),
                T.RandomCrop(crop),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(list(mean), list(std)),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.dists[index]


@dataclass
class Timing:
    """Per-step wait and compute times (seconds) after the warm-up steps, and the loop's peak
    memory (MiB; see :class:`StepTimer`)."""

    warmup: int
    batch: int
    waits: list[float] = field(default_factory=list)
    computes: list[float] = field(default_factory=list)
    seen: int = 0
    peak_mb: float = float("nan")

    def add(self, wait: float, compute: float) -> None:
        self.seen += 1
        if self.seen > self.warmup:
            self.waits.append(wait)
            self.computes.append(compute)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wait = previous step's end -> this step's start (fetch, copy to the device, hooks);
    compute = start -> end of the training step (forward, backward, optimiser step). Peak
    memory: on a GPU the most allocated from the start of training (weights, optimiser state,
    activations; an earlier loop's peak does not count); on the CPU the process's max RSS, which
    cannot be reset."""

    def __init__(self, timing: Timing) -> None:
        self.timing = timing
        self.mark = 0.0
        self.start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_end(self, trainer, pl_module) -> None:
        self.timing.peak_mb = peak_memory_mb(pl_module.device)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.mark = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        synchronise(pl_module.device)
        end = time.perf_counter()
        self.timing.add(self.start - self.mark, end - self.start)
        self.mark = end


@dataclass
class Setting:
    accelerator: str  # cpu | gpu
    precision: str  # 32-true | bf16-mixed


def base_overrides(args: argparse.Namespace, setting: Setting, workers: int | None) -> list[str]:
    """The run's config: the data set's YAML (``--dataset``) or the defaults, with the options
    given; one epoch of exactly ``warmup + steps`` training steps, no validation."""
    given = {
        "model.backbone": args.backbone,
        "data.batch_size": args.batch,
        "data.transforms.train_resize": args.resize,
        "data.transforms.crop": args.crop,
    }
    overrides = [f"{key}={value}" for key, value in given.items() if value is not None]
    if args.dataset:
        overrides.insert(0, f"dataset={args.dataset}")
    return [
        *overrides,
        "model.pretrained=none",
        f"data.num_workers={'null' if workers is None else workers}",
        f"trainer.accelerator={setting.accelerator}",
        f"trainer.precision={setting.precision}",
        "trainer.devices=1",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "logger.mode=disabled",
        "optim.scheduler=none",
        *args.override,
    ]


def build_data(args, cfg, folder: Path | None) -> IAADataModule:
    """Our DataModule: the folder's, or the configured data set's (``--dataset``)."""
    data = build_datamodule(cfg.data) if folder is None else FolderData(cfg.data, folder)
    data.train_views = views_needed(list(cfg.method.parts))
    data.prepare_data()
    data.setup("fit")
    return data


def limit_steps(args, cfg, data: IAADataModule) -> None:
    """One epoch of ``warmup + steps`` batches (a fraction of the split where it is larger)."""
    batches = len(data.datasets["train"]) // cfg.data.batch_size
    wanted = args.warmup + args.steps
    if batches < wanted:
        raise SystemExit(f"the training split has {batches} batches, {wanted} are needed")
    cfg.trainer.limit_train_batches = min(1.0, (wanted + 0.5) / batches)


def elta_loop(args, folder: Path | None, setting: Setting, method: str, workers) -> Timing:
    """`elta train`'s loop: load_config -> our DataModule -> build_module -> build_trainer.fit."""
    cfg = load_config([f"method={method}", *base_overrides(args, setting, workers)])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(args, cfg, folder)
    limit_steps(args, cfg, data)
    module = build_module(cfg, data)
    timing = Timing(args.warmup, cfg.data.batch_size)
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(cfg, Path(run_dir), None, [StepTimer(timing)])
        trainer.fit(module, datamodule=data)
    return timing


def plain_loop(args, folder: Path | None, setting: Setting, workers: int) -> Timing:
    """A hand-written loop over the same files, model, batch, optimiser and precision."""
    cfg = load_config(["method=vanilla", *base_overrides(args, setting, workers)])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = build_data(args, cfg, folder)
    module = build_module(cfg, data)
    device = torch.device("cuda" if setting.accelerator == "gpu" else "cpu")
    model = copy.deepcopy(torch.nn.Sequential(module.backbone, module.head)).to(device).train()
    optimiser_class = torch.optim.AdamW if cfg.optim.name == "adamw" else torch.optim.Adam
    optimiser = optimiser_class(
        model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )
    table = data.tables["train"]
    if table.distributions is None:
        raise SystemExit("the plain loop trains on vote distributions; this data set has none")
    paths = [data.image_dir / name for name in table.image_ids]
    sizes = cfg.data.transforms
    norm = normalisation(sizes)
    dataset = PlainImages(paths, table.distributions, sizes.train_resize, sizes.crop, norm)
    loader = DataLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=setting.precision.startswith("bf16")
    )
    timing = Timing(args.warmup, cfg.data.batch_size)
    batches = iter(loader)
    mark = time.perf_counter()
    for _ in range(args.warmup + args.steps):
        images, dists = next(batches)
        images = images.to(device, non_blocking=True)
        dists = dists.to(device, non_blocking=True)
        start = time.perf_counter()
        with autocast:
            logits = model(images)
        loss = emd_per_sample(torch.softmax(logits.float(), dim=-1), dists).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        synchronise(device)
        end = time.perf_counter()
        timing.add(start - mark, end - start)
        mark = end
    return timing


def prepare_folder(args: argparse.Namespace, root: Path) -> Path:
    """The JPEG folder: ``--images``' files, or ``--count`` drawn ones, linked in turn under
    ``(warmup + steps) * batch`` training names (one epoch is exactly the steps) plus
    :data:`HELD_OUT`."""
    needed = (args.warmup + args.steps) * (args.batch or DEFAULTS["batch"]) + HELD_OUT
    if args.images:
        files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if not files:
            raise SystemExit(f"--images {args.images}: no .jpg/.jpeg files")
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        count = min(args.count, needed)
        files = write_photos(root / "photos", (width, height), count, source_photos(args.photos))
    folder = root / "train"
    folder.mkdir()
    for k in range(needed):
        (folder / f"{k:05d}.jpg").symlink_to(files[k % len(files)].resolve())
    return folder


def summarise(timing: Timing) -> tuple[float, float, float]:
    """(images per second, wait ms per step, compute ms per step): medians over the timed steps
    (a shared machine's stray slow steps do not move them), images/s from their sum."""
    wait, compute = float(np.median(timing.waits)), float(np.median(timing.computes))
    return timing.batch / (wait + compute), wait * 1000, compute * 1000


def best_of(runs: list[Timing]) -> Timing:
    """The repeat with the most images per second."""
    return max(runs, key=lambda timing: summarise(timing)[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options (``argv``; default the command line), with :data:`DEFAULTS` filled in for
    folder runs; ``benchmarks/gpu_check.py`` builds its loops' options here too."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, help="folder of JPEGs (default: drawn ones)")
    parser.add_argument("--size", default="800x600", help="drawn JPEGs' size, WIDTHxHEIGHT")
    parser.add_argument("--count", type=int, default=32, help="distinct drawn JPEGs")
    parser.add_argument("--photos", type=Path, help="real photos to cut the drawn JPEGs from")
    parser.add_argument("--dataset", help="a configured data set instead of a JPEG folder")
    parser.add_argument("--backbone", help=f"timm model (folder: {DEFAULTS['backbone']})")
    parser.add_argument("--batch", type=int, help=f"batch size (folder: {DEFAULTS['batch']})")
    parser.add_argument("--resize", type=int, help=f"train resize (folder: {DEFAULTS['resize']})")
    parser.add_argument("--crop", type=int, help=f"train crop (folder: {DEFAULTS['crop']})")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--workers", default="auto", help="loader workers: N, auto, or a list")
    parser.add_argument("--methods", default="vanilla,elta", help="elta loops' methods")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each loop, in turn")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain loop")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU settings")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU setting")
    parser.add_argument("--override", nargs="*", default=[], help="more key=value for elta")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if not args.dataset:
        for key, value in DEFAULTS.items():
            setattr(args, key, getattr(args, key) or value)
    return args


def quiet_lightning() -> None:
    """Lightning's per-fit info lines and known warnings off: only the tables are printed."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def main() -> None:
    args = parse_args()
    quiet_lightning()
    settings = [] if args.gpu_only else [Setting("cpu", "32-true")]
    if torch.cuda.is_available() and not args.cpu_only:
        settings += [Setting("gpu", "32-true"), Setting("gpu", "bf16-mixed")]
    if not settings:
        raise SystemExit("--gpu-only: no CUDA GPU here")
    threads = torch.get_num_threads()  # the cap the CPU rule keeps (e.g. OMP_NUM_THREADS)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        folder = None if args.dataset else prepare_folder(args, Path(root))
        for setting in settings:
            kind = "cpu" if setting.accelerator == "cpu" else "cuda"
            plain_rate = None
            for option in args.workers.split(","):
                requested = None if option == "auto" else int(option)
                rule = loader_settings(requested, kind, 1, None, threads)
                if rule.torch_threads is not None:  # both loops get the rule's threads
                    torch.set_num_threads(rule.torch_threads)
                workers = f"{rule.num_workers}" + (" (auto)" if requested is None else "")
                where = f"{setting.accelerator} {setting.precision}"
                loops = [] if args.no_plain else [("plain", "vanilla")]
                loops += [("elta train", method) for method in args.methods.split(",")]
                timings: dict[tuple[str, str], list[Timing]] = {loop: [] for loop in loops}
                for _ in range(args.repeats):  # in turn, so that a slow spell hits all
                    for loop, method in loops:
                        if loop == "plain":
                            timing = plain_loop(args, folder, setting, rule.num_workers)
                        else:
                            timing = elta_loop(args, folder, setting, method, requested)
                        timings[(loop, method)].append(timing)
                        gc.collect()  # ends the loop's loader workers before the next one
                runs = [(loop, method, best_of(timings[(loop, method)])) for loop, method in loops]
                for loop, method, timing in runs:
                    rate, wait, compute = summarise(timing)
                    plain_rate = plain_rate or rate
                    rows.append(
                        f"| {loop} | {method} | {where} | {workers} | {torch.get_num_threads()} "
                        f"| {rate:,.1f} | {wait:,.1f} | {compute:,.1f} | {rate / plain_rate:.2f}x |"
                    )
    source = args.dataset or args.images or f"{args.size} JPEGs (q90, {args.count} distinct)"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    lines = [
        f"Training throughput on {source}: {args.backbone or 'the YAML backbone'} (random init), "
        f"batch {args.batch or 'of the YAML'}, median of {args.steps} timed steps after "
        f"{args.warmup}, best of {args.repeats} run(s) per loop; "
        f"{available_cores()} cores ({platform.processor() or platform.machine()}), {gpu}; "
        f"torch {torch.__version__.split('+')[0]}. 'vs plain': images/s over the first row of "
        "the same device and precision.",
        "",
        "| loop | method | device, precision | workers | threads | images/s | wait ms/step "
        "| compute ms/step | vs plain |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
