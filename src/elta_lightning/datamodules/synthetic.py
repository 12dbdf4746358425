"""The built-in long-tailed IAA data set: generated JPEGs with AVA-shaped vote distributions.

Each image is a smooth random colour field whose visual quality follows its score: high-scoring
images are crisp, contrasty and colourful; low-scoring ones are blurred, noisy, flat and washed
out. Mean scores follow AVA's shape (mean ~5.4, std ~0.73, both tails rare), votes are drawn
per image from a discretised Gaussian around the image's quality, and the labels are written in
the AVA CSV layout and read back through the same reader that real AVA users use. As with real
photos, the picture does not determine its score: the visual cues follow the score plus noise
(``cue_noise`` standard deviations), which caps the attainable SRCC near 1 / sqrt(1 + noise^2).
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image, ImageEnhance, ImageFilter

from elta_lightning.config import DataConfig, SyntheticConfig
from elta_lightning.datamodules.ava import AVA_VOTE_COLUMNS, read_ava_csv
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.datamodules.labels import LabelTable
from elta_lightning.scales import AVA_SCALE

AVA_MEAN, AVA_STD = 5.4, 0.73
FORMAT_VERSION = 1


def draw_mean_scores(count: int, rng: np.random.Generator) -> np.ndarray:
    """Latent mean scores with AVA's shape: a slightly heavy-tailed bell at 5.4 +- 0.73."""
    t = rng.standard_t(df=8, size=count) * np.sqrt(6 / 8)
    return np.clip(AVA_MEAN + AVA_STD * t, 1.6, 9.2)


def draw_votes(means: np.ndarray, cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Vote counts over ratings 1..10 around each latent mean (rater disagreement ~1.4 levels)."""
    levels = np.arange(1, 11, dtype=np.float64)
    spread = rng.uniform(1.2, 1.6, size=(len(means), 1))
    logits = -0.5 * ((levels[None, :] - means[:, None]) / spread) ** 2
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    totals = rng.integers(cfg.votes_min, cfg.votes_max + 1, size=len(means))
    return np.stack([rng.multinomial(n, p) for n, p in zip(totals, probs)])


def render_image(quality: float, size: int, rng: np.random.Generator) -> Image.Image:
    """A colour field whose sharpness, noise, contrast and saturation encode ``quality``.

    ``quality`` is the standardised mean score (0 = average photo); cues saturate beyond +-3.
    """
    grid = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    shapes = rng.uniform(0, 255, size=(size, size, 3))
    cells = max(2, size // 8)
    mask = rng.random((cells, cells)) < 0.25
    mask = np.kron(mask, np.ones((size // cells + 1, size // cells + 1)))[:size, :size, None]
    array = np.where(mask, 0.6 * np.asarray(image) + 0.4 * shapes, np.asarray(image))
    image = Image.fromarray(array.astype(np.uint8))
    good = float(1.0 / (1.0 + np.exp(-1.5 * np.clip(quality, -3, 3))))
    image = ImageEnhance.Color(image).enhance(0.2 + 1.6 * good)
    image = ImageEnhance.Contrast(image).enhance(0.4 + 1.2 * good)
    image = image.filter(ImageFilter.GaussianBlur(radius=2.5 * (1 - good) ** 1.5))
    noise = rng.normal(0.0, 28.0 * (1 - good), size=(size, size, 3))
    array = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255)
    return Image.fromarray(array.astype(np.uint8))


def _write_csv(path: Path, ids: list[str], votes: np.ndarray) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", *AVA_VOTE_COLUMNS, "tag1", "tag2", "tag3"])
        for image_id, counts in zip(ids, votes):
            writer.writerow([image_id, *counts.tolist(), 0, 0, 0])


def draw_samples(
    count: int, cfg: SyntheticConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts (count, 10) and visual cues (count,): standardised vote mean plus noise."""
    means = draw_mean_scores(count, rng)
    votes = draw_votes(means, cfg, rng)
    vote_means = votes @ np.arange(1, 11) / votes.sum(axis=1)
    cues = (vote_means - AVA_MEAN) / AVA_STD + rng.normal(0.0, cfg.cue_noise, size=count)
    return votes, cues


def _render_images(
    folder: Path, ids: list[str], cues: np.ndarray, size: int, rng: np.random.Generator
) -> None:
    folder.mkdir(parents=True)
    for image_id, cue in zip(ids, cues):
        render_image(cue, size, rng).save(folder / f"{image_id}.jpg", quality=92)


def generate(cfg: SyntheticConfig, folder: Path) -> None:
    """Write the data set into ``folder``: ``images/<id>.jpg`` and ``{train,val,test}.csv``."""
    rng = np.random.default_rng(cfg.seed)
    sizes = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    total = sum(sizes.values())
    votes, cues = draw_samples(total, cfg, rng)
    ids = [f"syn{k:06d}" for k in range(total)]
    _render_images(folder / "images", ids, cues, cfg.image_size, rng)
    start = 0
    for split, size in sizes.items():
        _write_csv(folder / f"{split}.csv", ids[start : start + size], votes[start : start + size])
        start += size
    (folder / "meta.json").write_text(json.dumps(generation_settings(cfg), indent=2))


def generation_settings(cfg: SyntheticConfig) -> dict:
    """Everything that decides the generated files (not where they are cached, nor the size of
    the unlabeled split, which is generated separately on demand)."""
    settings = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    settings.pop("cache_dir")
    settings.pop("num_unlabeled")
    return {**settings, "version": FORMAT_VERSION}


def dataset_folder(cfg: SyntheticConfig) -> Path:
    """Cache folder of one generated version; the name is a hash of every generation setting."""
    settings = json.dumps(generation_settings(cfg), sort_keys=True)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:10]
    return Path(cfg.cache_dir).expanduser() / f"synthetic-{digest}"


def build_once(folder: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """``folder``, built by ``build(staging)`` unless ``folder / marker`` exists already.

    A lock file makes concurrent processes (the ranks of a DDP run) wait for the first one
    instead of building again; building into a temporary folder that is then renamed means a
    crash never leaves a half-written data set behind.
    """
    if (folder / marker).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f"{folder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / marker).is_file():
            staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            build(staging)
            staging.rename(folder)
    return folder


def ensure_generated(cfg: SyntheticConfig) -> Path:
    """Generate the data set once (see :func:`build_once`)."""
    return build_once(dataset_folder(cfg), "meta.json", lambda staging: generate(cfg, staging))


def unlabeled_folder(cfg: SyntheticConfig) -> Path:
    """Folder of the unlabeled split: ``images/`` (no labels there) and ``hidden_labels.csv``."""
    return dataset_folder(cfg) / f"unlabeled-{cfg.num_unlabeled}"


def ensure_unlabeled(cfg: SyntheticConfig) -> Path:
    """Generate the unlabeled split once, beside the data set (atomically, like the data set).

    ``num_unlabeled`` more images drawn like the others from their own random stream (seeded
    ``[seed, 1]``), so the labelled splits do not change with the split's size. Their votes go to
    ``hidden_labels.csv`` (AVA CSV layout), which self-training never reads unless asked for the
    oracle analysis (``method.apds.oracle``).
    """
    if cfg.num_unlabeled < 1:
        raise ValueError(
            f"data.synthetic.num_unlabeled must be >= 1 for an unlabeled split, got "
            f"{cfg.num_unlabeled}"
        )
    ensure_generated(cfg)
    return build_once(unlabeled_folder(cfg), "hidden_labels.csv", partial(_generate_unlabeled, cfg))


def _generate_unlabeled(cfg: SyntheticConfig, folder: Path) -> None:
    """Write the unlabeled split's images and hidden labels into ``folder``."""
    rng = np.random.default_rng([cfg.seed, 1])
    votes, cues = draw_samples(cfg.num_unlabeled, cfg, rng)
    ids = [f"unl{k:06d}" for k in range(cfg.num_unlabeled)]
    _render_images(folder / "images", ids, cues, cfg.image_size, rng)
    _write_csv(folder / "hidden_labels.csv", ids, votes)


class SyntheticDataModule(IAADataModule):
    """The built-in data set (``dataset=synthetic``), read through the AVA CSV reader."""

    name = "synthetic"
    scale = AVA_SCALE

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__(cfg)
        self.folder = dataset_folder(cfg.synthetic)

    @property
    def image_dir(self) -> Path:
        return self.folder / "images"

    def prepare_data(self) -> None:
        ensure_generated(self.cfg.synthetic)

    def read_splits(self) -> dict[str, LabelTable]:
        ensure_generated(self.cfg.synthetic)
        return {
            split: read_ava_csv(self.folder / f"{split}.csv") for split in ("train", "val", "test")
        }
