"""Training images per second per CPU core: our data path against the plain PyTorch pipeline.

Writes photo-like JPEGs of a few camera sizes (from real photos where some are found, see
:func:`source_photos`), then times, in one process on one thread (so the figure is per core;
loader workers multiply it), a batch of training items each way, collation included:

- ``plain``: ``Image.open(p).convert("RGB")`` and torchvision's ``Resize((300, 300))``,
  ``RandomCrop(256)``, ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize`` (what most
  IAA code does);
- ``before``: this project's former item: ``load_rgb`` (EXIF, modes, Pillow draft) and the v2
  float pipeline (``ToImage``, ``Resize``, ``RandomCrop``, flip, ``ToDtype``, ``Normalize``);
- ``float``: today's transform normalising on the host (what a loader gives without a Trainer);
- ``uint8, Pillow``: today's loader item decoded by ``load_rgb`` (no simplejpeg);
- ``uint8``: today's loader item: the fast JPEG path (simplejpeg, DCT-scaled), uint8 resize,
  crop and flip, stacked channels-last by ``collate_images``; the float normalisation then
  runs on the accelerator (its CPU cost is reported separately as ``normalise``).

Rounds alternate between the pipelines and the best round counts (CPU time of this process, so
other work on a shared machine disturbs it less). Usage:
``python benchmarks/image_decode.py [--count 12] [--photos DIR] [--out results.md]``.
Results are printed (and written with ``--out``) as a markdown table; nothing is asserted.
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
from PIL import Image, ImageOps, features
from torch.utils.data import default_collate
from torchvision import transforms as T
from torchvision.transforms import v2

from elta_lightning.config import TransformConfig
from elta_lightning.datamodules import images as images_module
from elta_lightning.datamodules.base import build_transform
from elta_lightning.datamodules.images import load_rgb, load_rgb_array
from elta_lightning.datamodules.transforms import (
    InputNormaliser,
    collate_images,
    normalisation,
)

SIZES = {
    "1024x768 (1024 px)": (1024, 768),
    "800x600 (AVA, TAD66K)": (800, 600),
    "4032x3024 (12 MP)": (4032, 3024),
}
RESIZE, CROP = 300, 256
#: Where real photographs may be found offline (Debian/Ubuntu wallpapers, e.g. the
#: lomiri-wallpapers-16.04 package: CC-BY/CC0 photos of 1365x1074 to 5312x2988).
PHOTO_FOLDERS = ("/usr/share/backgrounds",)
#: Wallpapers in those folders that are patterns, not photos.
NOT_PHOTOS = ("analogpattern", "umang")


def source_photos(folder: Path | None = None) -> list[Image.Image]:
    """Real colour photos to cut the benchmark's JPEGs from: ``folder``'s JPEGs, else the
    wallpapers of :data:`PHOTO_FOLDERS`, else scikit-image's sample photos (when installed);
    an empty list when none is found (then :func:`photo_like` draws them)."""
    folders = [folder] if folder is not None else [Path(f) for f in PHOTO_FOLDERS]
    for candidate in folders:
        paths = sorted(p for p in candidate.rglob("*.jp*g") if p.is_file()) if candidate else []
        paths = [p for p in paths if not any(name in p.name for name in NOT_PHOTOS)]
        if paths:
            return [ImageOps.exif_transpose(Image.open(p)).convert("RGB") for p in paths]
    if folder is not None:
        raise SystemExit(f"--photos {folder}: no JPEG files found")
    try:
        from skimage import data
    except ImportError:
        return []
    names = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")
    return [Image.fromarray(getattr(data, name)()) for name in names]


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth colour fields, hard-edged shapes and fine texture: JPEG entropy close to a photo
    (used when no real photo is found)."""
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


def write_photos(
    folder: Path, size: tuple[int, int], count: int, sources: list[Image.Image], quality: int = 90
) -> list[Path]:
    """``count`` JPEGs of ``size`` (landscape; quality ``quality``, 4:2:0 as cameras and the web
    store them): the sources cropped to the aspect ratio and resized (Lanczos), in turn, or
    :func:`photo_like` images without sources."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        if sources:
            source = sources[k % len(sources)]
            if source.height > source.width:
                source = source.transpose(Image.Transpose.ROTATE_90)
            if k >= len(sources):  # a second pass over the sources: mirrored
                source = source.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            image = ImageOps.fit(source, size, Image.Resampling.LANCZOS)
        else:
            image = photo_like(size, k)
        path = folder / f"{size[0]}x{size[1]}_{k:03d}.jpg"
        image.save(path, quality=quality)
        paths.append(path)
    return paths


def plain_pipeline() -> Callable[[Path], torch.Tensor]:
    """The plain PyTorch item: PIL decode at full size, torchvision v1 transforms on PIL."""
    mean, std = normalisation(TransformConfig())
    transform = T.Compose(
        [
            T.Resize((RESIZE, RESIZE)),
            T.RandomCrop(CROP),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )

    def item(path: Path) -> torch.Tensor:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))

    return item


def former_pipeline() -> Callable[[Path], torch.Tensor]:
    """This project's item before the uint8 path: ``load_rgb`` + the v2 float pipeline."""
    mean, std = normalisation(TransformConfig())
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((RESIZE, RESIZE), antialias=True),
            v2.RandomCrop(CROP),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
    draft = max(RESIZE, TransformConfig().eval_resize)
    return lambda path: transform(load_rgb(path, draft))


def pipelines() -> dict[str, Callable[[Path], torch.Tensor]]:
    cfg = TransformConfig(train_resize=RESIZE, crop=CROP)
    host_float = build_transform(cfg, train=True)
    uint8 = build_transform(cfg, train=True, normalise=False)

    def ours(path: Path, transform=uint8) -> torch.Tensor:
        return transform(torch.from_numpy(load_rgb_array(path, RESIZE)).permute(2, 0, 1))

    def ours_pillow(path: Path) -> torch.Tensor:
        return uint8(load_rgb(path, RESIZE))

    return {
        "plain": plain_pipeline(),
        "before": former_pipeline(),
        "float": lambda path: ours(path, host_float),
        "uint8, Pillow": ours_pillow,
        "uint8": ours,
    }


#: How each pipeline's items are batched: the uint8 ones as the DataModule's loaders do it.
COLLATE = {"uint8": collate_images, "uint8, Pillow": collate_images}


def batch_rates(
    steps: dict[str, Callable[[Path], torch.Tensor]], paths: list[Path], rounds: int, batch: int
) -> dict[str, float]:
    """Images per CPU-second of each pipeline: ``batch`` items then their collate function,
    over ``paths``; rounds alternate between pipelines, the best round of each counts."""
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            collate = COLLATE.get(name, default_collate)
            step(paths[0])  # warm
            start = time.process_time()
            for first in range(0, len(paths), batch):
                collate([{"image": step(p)} for p in paths[first : first + batch]])
            best[name] = min(best[name], time.process_time() - start)
    return {name: len(paths) / seconds for name, seconds in best.items()}


def normalise_cost(batch: int, rounds: int) -> float:
    """CPU milliseconds per image of the uint8 -> float normalisation (on a GPU it runs there)."""
    normaliser = InputNormaliser(*normalisation(TransformConfig()))
    images = torch.randint(0, 256, (batch, 3, CROP, CROP), dtype=torch.uint8)
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        normaliser({"image": images})
        best = min(best, time.process_time() - start)
    return best / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=12, help="images per size")
    parser.add_argument("--batch", type=int, default=12, help="items per collated batch")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (best is kept)")
    parser.add_argument("--photos", type=Path, help="folder of JPEG photos to cut images from")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sources = source_photos(args.photos)
    steps = pipelines()
    fast = "on" if images_module.simplejpeg is not None else "off (simplejpeg not installed)"
    origin = f"{len(sources)} real photos" if sources else "drawn photo-like images"
    lines = [
        f"Training items per second on one core ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__.split('+')[0]}, Pillow {Image.__version__}, libjpeg-turbo "
        f"{features.check_feature('libjpeg_turbo')}, fast JPEG path {fast}); resize "
        f"{RESIZE} -> crop {CROP} -> flip, batches of {args.batch} collated, JPEG quality 90 cut "
        f"from {origin}; best of {args.rounds} alternating rounds of CPU time:",
        "",
        "| image size | file size | " + " | ".join(steps) + " | uint8 / plain |",
        "| --- | --- |" + " ---: |" * (len(steps) + 1),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for label, size in SIZES.items():
            paths = write_photos(Path(folder) / label.split()[0], size, args.count, sources)
            megabytes = np.mean([p.stat().st_size for p in paths]) / 1e6
            rates = batch_rates(steps, paths, args.rounds, args.batch)
            cells = " | ".join(f"{rate:,.0f}" for rate in rates.values())
            speedup = rates["uint8"] / rates["plain"]
            lines.append(f"| {label} | {megabytes:.2f} MB | {cells} | **{speedup:.1f}x** |")
    cost = normalise_cost(args.batch, args.rounds)
    lines += [
        "",
        f"normalise (uint8 -> float on the device; here on this CPU): {cost:.3f} ms per "
        f"{CROP} px image",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
