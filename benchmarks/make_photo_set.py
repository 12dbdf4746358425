"""A labelled set of real photographs in the AVA ELTA-CSV layout, for accuracy benchmarks.

No IAA data set with labels can be installed offline (``../shared/reference/environment.md``,
section 3), so this script makes one from real photos: every image is a distinct view of one
of ~30 real photographs (random crop of 35-100 % of its area, aspect 4:3 / 3:2 / 1:1 / 3:4,
random mirror, slight colour jitter), stored as a 1024-px (long side) JPEG at quality 92, with
one photometric degradation of random strength ``d`` in [0, 1]: Gaussian blur, sensor noise,
under- or over-exposure, haze (lost contrast) or desaturation, each at a strength still visible
at the benchmark's 128-144 px input.

Labels are real AVA vote rows (``image_id,score2..score11`` of an ELTA CSV, default the shared
AVA ``test.csv``), so the targets have AVA's real long-tailed distribution of mean scores and
vote shapes. They are assigned so that the score follows the degradation: each image gets a
latent quality ``q = -d + N(0, noise^2)`` (``--label-noise``, default 0.25); the N rows are
drawn without replacement from the CSV (seeded), sorted by their mean score, and the image of
rank r in ``q`` gets the row of rank r in mean score. So a model that read ``d`` exactly would
reach SRCC corr-limited by the noise (about 0.75 at the default), and the label is independent
of which photo an image was cut from (all photos feed all splits).

Output (``--out DIR``): ``train.csv`` / ``val.csv`` / ``test.csv`` (header
``image_id,score2,...,score11,tag1,tag2,tag3,score``; image ids 900000, 900001, ...; tags 0;
``score`` the row's mean), ``images/<image_id>.jpg``, and ``manifest.csv`` (split, source
photo, crop, degradation, strength, latent quality, AVA row taken). Read it with
``elta train dataset=ava data.root=DIR data.layout=elta_csv``.

Photos (``--photos``, files or folders searched recursively for .jpg/.jpeg/.png): by default
the Debian wallpaper packages and scikit-image's sample photos, unpacked as follows (no
install needed; about 75 MB downloaded in 2 s)::

    mkdir -p /tmp/parity && cd /tmp/parity
    apt-get download lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds
    for f in *.deb; do dpkg-deb -x "$f" x; done
    pip download --no-deps scikit-image==0.26.0 -d wheels
    unzip -q -o wheels/scikit_image-*.whl 'skimage/data/*' -d sk
    python benchmarks/make_photo_set.py --photos x/usr/share/backgrounds sk/skimage/data \\
        --out /tmp/parity/photoset

Files whose name marks a pattern, a render or a non-photo (see :data:`NOT_PHOTOS`) and grey
images are skipped; at least 8 photos are required. ``--train/--val/--test`` set the split
sizes (default 2000 / 400 / 800, as the accuracy-parity issue).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

DEFAULT_LABELS = Path(__file__).resolve().parents[2] / "shared/data/labels/elta_csv/ava/test.csv"
VOTE_COLUMNS = [f"score{k}" for k in range(2, 12)]
LEVELS = np.arange(1, 11, dtype=np.float64)
FIRST_ID = 900000
LONG_SIDE = 1024
#: Aspect ratios (width / height) of the crops.
ASPECTS = (4 / 3, 3 / 2, 1.0, 3 / 4)
#: The degradations; the strength ``d`` in [0, 1] scales each (see :func:`degrade`).
DEGRADATIONS = ("blur", "noise", "dark", "bright", "haze", "desaturate")
#: Names of files that are not photographs (patterns, renders, logos, medical or test images).
NOT_PHOTOS = (
    "analogpattern",
    "umang",
    "fossa",
    "painting-colors",
    "stripes",
    "radioactive",
    "warm-no",
    "cold-no",
    "dark-no",
    "float-into",
    "traditional",
    "elephants",
    "gulp",
    "arc-colors",
    "flow",
    "waves",
    "spring",
    "silk",
    "brick",
    "camera",
    "cell",
    "chessboard",
    "clock",
    "coins",
    "color",
    "grass",
    "gravel",
    "horse",
    "ihc",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "phantom",
    "retina",
    "text",
    "no_time",
    "motorcycle_right",
)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
WORKING_SIDE = 2048  # sources are shrunk to this long side once (crops stay >= 1024 px)


def find_photos(paths: list[Path]) -> list[Path]:
    """Colour photographs under ``paths`` (files or folders), non-photos left out, sorted."""
    found = []
    for path in paths:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            name = file.name.lower()
            if file.suffix.lower() not in PHOTO_SUFFIXES or "/doc/" in str(file):
                continue
            if any(tag in name for tag in NOT_PHOTOS):
                continue
            found.append(file)
    return sorted(set(found))


def load_source(path: Path) -> Image.Image | None:
    """The photo as RGB, upright, long side at most :data:`WORKING_SIDE`; None if grey."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
            return None
        image = image.convert("RGB")
    pixels = np.asarray(image.resize((64, 64)), dtype=np.float64)
    if np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean() < 2.0:  # grey stored as RGB
        return None
    scale = WORKING_SIDE / max(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


@dataclass
class Variant:
    """How one image is cut from its source photo and degraded."""

    source: int
    box: tuple[int, int, int, int]
    size: tuple[int, int]
    mirror: bool
    jitter: tuple[float, float, float]  # brightness, contrast, colour factors near 1
    degradation: str
    strength: float


def draw_variant(rng: np.random.Generator, source: int, image: Image.Image) -> Variant:
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    width, height = image.size
    area = rng.uniform(0.35, 1.0) * width * height
    crop_w = min(width, math.sqrt(area * aspect))
    crop_h = min(height, crop_w / aspect)
    crop_w = crop_h * aspect
    left = rng.uniform(0, width - crop_w)
    top = rng.uniform(0, height - crop_h)
    box = (round(left), round(top), round(left + crop_w), round(top + crop_h))
    if aspect >= 1:
        size = (LONG_SIDE, round(LONG_SIDE / aspect))
    else:
        size = (round(LONG_SIDE * aspect), LONG_SIDE)
    return Variant(
        source=source,
        box=box,
        size=size,
        mirror=bool(rng.random() < 0.5),
        jitter=tuple(float(v) for v in rng.uniform(0.95, 1.05, size=3)),
        degradation=DEGRADATIONS[rng.integers(len(DEGRADATIONS))],
        strength=float(rng.uniform(0.0, 1.0)),
    )


def degrade(image: Image.Image, kind: str, d: float, rng: np.random.Generator) -> Image.Image:
    """``image`` (1024 px) with degradation ``kind`` at strength ``d`` in [0, 1].

    blur: Gaussian, radius 16 d px (2.2 d px at 144 px); noise: Gaussian, sigma 70 d grey
    levels per pixel with 2x2 grain (still ~20 d after the resize to 144 px); dark / bright:
    exposure x (1 - 0.7 d) / gamma towards white (1 - 0.75 d); haze: contrast x (1 - 0.75 d)
    toward a light grey; desaturate: colour x (1 - d)."""
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=16.0 * d)) if d > 0 else image
    if kind == "noise":
        w, h = image.size
        grain = rng.normal(0.0, 70.0 * d, size=(-(-h // 2), -(-w // 2), 3))
        grain = np.kron(grain, np.ones((2, 2, 1)))[:h, :w]
        pixels = np.asarray(image, dtype=np.float64) + grain
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if kind == "dark":
        return ImageEnhance.Brightness(image).enhance(1.0 - 0.7 * d)
    if kind == "bright":
        pixels = np.asarray(image, dtype=np.float64) / 255.0
        pixels = pixels ** (1.0 - 0.75 * d)
        return Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))
    if kind == "haze":
        pixels = np.asarray(image, dtype=np.float64)
        pixels = 200.0 + (pixels - 200.0) * (1.0 - 0.75 * d)
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    if kind == "desaturate":
        return ImageEnhance.Color(image).enhance(1.0 - d)
    raise ValueError(f"unknown degradation {kind!r}")


def render(variant: Variant, source: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = source.crop(variant.box).resize(variant.size, Image.Resampling.LANCZOS)
    if variant.mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    bright, contrast, colour = variant.jitter
    image = ImageEnhance.Brightness(image).enhance(bright)
    image = ImageEnhance.Contrast(image).enhance(contrast)
    image = ImageEnhance.Color(image).enhance(colour)
    return degrade(image, variant.degradation, variant.strength, rng)


def read_vote_rows(path: Path) -> tuple[list[list[int]], np.ndarray, list[str]]:
    """Vote counts (ten per row), their mean scores and the AVA ids of an ELTA-layout CSV."""
    votes, ids = [], []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            counts = [int(float(row[c])) for c in VOTE_COLUMNS]
            if sum(counts) > 0:
                votes.append(counts)
                ids.append(row["image_id"])
    if not votes:
        raise SystemExit(f"{path}: no vote rows")
    counts = np.asarray(votes, dtype=np.float64)
    return votes, counts @ LEVELS / counts.sum(axis=1), ids


def assign_labels(
    strengths: np.ndarray, means: np.ndarray, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(row of the vote table for each image, latent quality): ``len(strengths)`` rows drawn
    without replacement, matched by rank of mean score to the rank of ``-d + N(0, noise^2)``."""
    count = len(strengths)
    if count > len(means):
        raise SystemExit(f"{count} images but only {len(means)} label rows")
    rows = rng.choice(len(means), size=count, replace=False)
    rows = rows[np.argsort(means[rows], kind="stable")]  # ascending mean score
    latent = -strengths + rng.normal(0.0, noise, size=count)
    assigned = np.empty(count, dtype=np.int64)
    assigned[np.argsort(latent, kind="stable")] = rows  # lowest quality -> lowest mean
    return assigned, latent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=400)
    parser.add_argument("--test", type=int, default=800)
    parser.add_argument("--label-noise", type=float, default=0.25)
    parser.add_argument("--quality", type=int, default=92)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.perf_counter()
    paths = find_photos(args.photos)
    sources, names = [], []
    for path in paths:
        image = load_source(path)
        if image is not None:
            sources.append(image)
            names.append(path.name)
    if len(sources) < 8:
        raise SystemExit(f"only {len(sources)} colour photos under {args.photos}: need >= 8")
    print(f"{len(sources)} source photos: {', '.join(names)}", flush=True)
    rng = np.random.default_rng(args.seed)
    splits = ["train"] * args.train + ["val"] * args.val + ["test"] * args.test
    total = len(splits)
    order = np.concatenate(
        [rng.permutation(len(sources)) for _ in range(-(-total // len(sources)))]
    )
    variants = [draw_variant(rng, int(s), sources[int(s)]) for s in order[:total]]
    votes, means, ava_ids = read_vote_rows(args.labels)
    strengths = np.array([v.strength for v in variants])
    assigned, latent = assign_labels(strengths, means, args.label_noise, rng)
    images = args.out / "images"
    images.mkdir(parents=True, exist_ok=True)
    header = ["image_id", *VOTE_COLUMNS, "tag1", "tag2", "tag3", "score"]
    tables = {s: [] for s in ("train", "val", "test")}
    manifest = []
    for k, (split, variant) in enumerate(zip(splits, variants)):
        image_id = str(FIRST_ID + k)
        pixel_rng = np.random.default_rng([args.seed, k])
        image = render(variant, sources[variant.source], pixel_rng)
        image.save(images / f"{image_id}.jpg", quality=args.quality)
        row = int(assigned[k])
        tables[split].append([image_id, *votes[row], 0, 0, 0, f"{means[row]:.6f}"])
        manifest.append(
            [
                image_id,
                split,
                names[variant.source],
                *variant.box,
                int(variant.mirror),
                variant.degradation,
                f"{variant.strength:.4f}",
                f"{latent[k]:.4f}",
                ava_ids[row],
                f"{means[row]:.6f}",
            ]
        )
        if (k + 1) % 500 == 0:
            print(f"{k + 1}/{total} images ({time.perf_counter() - started:.0f} s)", flush=True)
    for split, rows in tables.items():
        with (args.out / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    with (args.out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "image_id",
                "split",
                "source",
                "left",
                "top",
                "right",
                "bottom",
                "mirror",
                "degradation",
                "strength",
                "latent_quality",
                "ava_row_id",
                "score",
            ]
        )
        writer.writerows(manifest)
    score = np.array([float(r[-1]) for r in manifest])
    from scipy.stats import spearmanr

    rho = spearmanr(-strengths, score).statistic
    print(
        f"wrote {total} images ({args.train}/{args.val}/{args.test}) to {args.out} in "
        f"{time.perf_counter() - started:.0f} s; SRCC(-strength, score) = {rho:.3f} (the "
        "ceiling of a model that reads the strength exactly)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
