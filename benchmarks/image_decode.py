"""Images per second per CPU core: our decode pipeline against plain PIL, on full-size JPEGs.

Writes photo-like JPEGs of a few camera sizes into a temporary folder, then times, in one
process with one thread (so the figure is per core; data loader workers scale it):

- ``plain PIL``: ``Image.open(p).convert("RGB").resize((300, 300))``, what most IAA code does;
- ``load_rgb``: our loader (EXIF orientation, mode handling, DCT-domain draft decoding), then
  the same resize;
- ``train item``: what one training sample costs in the DataModule: ``load_rgb`` + the
  authors' train transform (resize 300, random crop 256, flip, normalise) as a tensor;
- ``train item, plain``: the same transform after plain PIL decoding (no draft).

Usage: ``python benchmarks/image_decode.py [--count 20] [--out results.md]``. Results are
printed (and written with ``--out``) as a markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, features

from elta_lightning.config import TransformConfig
from elta_lightning.datamodules.base import build_transform
from elta_lightning.datamodules.images import load_rgb

SIZES = {
    "400x300 (elta prepare resize=300)": (400, 300),
    "800x600 (TAD66K, AVA)": (800, 600),
    "2048x1536": (2048, 1536),
    "4032x3024 (12 MP)": (4032, 3024),
}
TARGET = 300


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth colour fields, hard-edged shapes and fine texture: JPEG entropy close to a photo."""
    rng = np.random.default_rng(seed)
    width, height = size
    small = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BICUBIC), dtype=float)
    y, x = np.ogrid[0:height, 0:width]
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.03, 0.2) * width
        image[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = rng.uniform(0, 255, size=3)
    texture = rng.normal(0, 1, size=(-(-height // 4), -(-width // 4), 1))
    texture = np.kron(texture, np.ones((4, 4, 1)))[:height, :width]
    image += 10 * texture + rng.normal(0, 4, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_files(folder: Path, size: tuple[int, int], count: int) -> list[Path]:
    paths = []
    for k in range(count):
        path = folder / f"{size[0]}x{size[1]}_{k}.jpg"
        photo_like(size, k).save(path, quality=92)
        paths.append(path)
    return paths


def rate(step: Callable[[Path], object], paths: list[Path], repeats: int) -> float:
    """Images per second of ``step`` over ``paths`` (best of ``repeats`` passes, after warm-up)."""
    step(paths[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for path in paths:
            step(path)
        best = min(best, time.perf_counter() - start)
    return len(paths) / best


def pipelines() -> dict[str, Callable[[Path], object]]:
    train = build_transform(TransformConfig(), train=True)

    def plain(path: Path) -> Image.Image:
        with Image.open(path) as image:
            return image.convert("RGB").resize((TARGET, TARGET), Image.Resampling.BILINEAR)

    def ours(path: Path) -> Image.Image:
        return load_rgb(path, TARGET).resize((TARGET, TARGET), Image.Resampling.BILINEAR)

    def plain_item(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return train(image.convert("RGB"))

    return {
        "plain PIL": plain,
        "load_rgb": ours,
        "train item": lambda path: train(load_rgb(path, TARGET)),
        "train item, plain": plain_item,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="images per size")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (best is kept)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = pipelines()
    header = "| image size | file size | " + " | ".join(steps) + " | speed-up |"
    lines = [
        f"Images per second, one core ({platform.processor() or platform.machine()}, Pillow "
        f"{Image.__version__}, libjpeg-turbo {features.check_feature('libjpeg_turbo')}, "
        f"target {TARGET} px):",
        "",
        header,
        "|" + " --- |" * (len(steps) + 3),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for label, size in SIZES.items():
            paths = write_files(Path(folder), size, args.count)
            megabytes = np.mean([p.stat().st_size for p in paths]) / 1e6
            rates = {name: rate(step, paths, args.repeats) for name, step in steps.items()}
            speedup = rates["load_rgb"] / rates["plain PIL"]
            cells = " | ".join(f"{r:,.0f}" for r in rates.values())
            lines.append(f"| {label} | {megabytes:.2f} MB | {cells} | {speedup:.1f}x |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
