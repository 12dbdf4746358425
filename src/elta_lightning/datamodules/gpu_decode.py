"""``data.decode=gpu``: JPEGs decoded on the GPU in batches (nvjpeg through torchvision).

For machines with few CPU cores per GPU. A loader worker then only reads each ordinary JPEG's
bytes (the files :func:`~elta_lightning.datamodules.images.ordinary_jpeg_size` lets the fast
path decode: upright YCbCr/grey/RGB JPEGs within the pixel limit) and draws the item's random
crop offsets and flips, in the order and from the generator the CPU transform uses, so a
seeded run draws the same crops and flips on either path. Every other file (rotated, CMYK,
PNG, 16-bit, transparent, too large, unreadable, ...) is decoded and transformed in the worker
as with ``data.decode=cpu``, with the same errors naming the file.

:class:`GpuCollate` puts the byte tensors of a batch in a :class:`JpegBatch`, which Lightning
leaves on the host when it moves the batch to the device (it has no ``to`` method:
``decode_jpeg`` reads its input from CPU memory whatever the device). In
``on_after_batch_transfer``, :func:`decode_batch` decodes them in one batched
``torchvision.io.decode_jpeg(list, mode=RGB, device=...)`` call, resizes each image to
``resize`` x ``resize`` (antialiased bilinear, as the CPU transform), cuts the drawn crops and
flips, and puts the worker-decoded rows in their places: ``image`` (and ``views``) become the
uint8 (B, [V,] 3, S, S) batch that the CPU path would have given, normalised next as usual.

Pixels against ``data.decode=cpu``: where the CPU path decodes at full size (a JPEG less than
twice ``resize`` on a side), the same up to the decoders and the resize kernel: nvjpeg's IDCT
and chroma upsampling differ from libjpeg-turbo's by a few grey levels, and torchvision resizes
uint8 CUDA images in float32 and rounds (the CPU kernel is uint8 fixed-point: at most 1 level
apart). Larger JPEGs are decoded by the CPU path at 1/2, 1/4 or 1/8 scale in the DCT domain
(Pillow's draft); nvjpeg has no scaled decoding, so the GPU path decodes them at full size and
antialias-resizes from there: a slightly different (sharper) image, not the same pixels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from elta_lightning.datamodules.images import MAX_PIXELS, ImageDecodeError, ordinary_jpeg_size
from elta_lightning.datamodules.transforms import ImageTransform, collate_images, stack_images
from elta_lightning.errors import ConfigError

DECODE_MODES = ("cpu", "gpu")
NO_CUDA = "data.decode=gpu needs a CUDA device; this machine has none: use data.decode=cpu"

#: item keys of a file left to the GPU: its bytes, its draws, its path (for errors)
JPEG_KEYS = ("jpeg", "crop_flip", "jpeg_path")


def check_decode(mode: str, cuda_available: bool | None = None) -> None:
    """Start-up check of ``data.decode``: a known mode, and CUDA present for ``gpu``."""
    if mode not in DECODE_MODES:
        raise ConfigError(f"data.decode must be one of {', '.join(DECODE_MODES)}; got {mode!r}")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if mode == "gpu" and not cuda_available:
        raise ConfigError(NO_CUDA)


def decodes_on_device(transform: Any) -> bool:
    """Whether a ``data.decode=gpu`` dataset with ``transform`` leaves JPEGs to the device: our
    :class:`ImageTransform` yielding uint8 (a Trainer drives the loader and its
    ``on_after_batch_transfer`` runs :func:`decode_batch`)."""
    return isinstance(transform, ImageTransform) and not transform.normalise


def jpeg_item(
    path: Path, transform: ImageTransform, views: int = 0, max_pixels: int = MAX_PIXELS
) -> dict[str, Any] | None:
    """The image part of an item for the device: ``jpeg`` the file's bytes (uint8, 1-D),
    ``crop_flip`` (1 + ``views``, 3) int64 rows of (top, left, flip), drawn for the image then
    each view as the CPU transform draws them (zeros for an eval transform, which draws
    nothing), and ``jpeg_path``. None where the file is not an ordinary JPEG (or unreadable):
    the caller decodes it on the CPU."""
    try:
        data = path.read_bytes()
    except OSError:
        return None  # missing, a folder, unreadable: the CPU path names the problem
    if ordinary_jpeg_size(data, max_pixels) is None:
        return None
    draws = torch.zeros((1 + views, 3), dtype=torch.int64)
    if transform.crop is not None:
        for row in range(1 + views):
            top, left, flip = transform.draw_crop_flip(transform.resize, transform.resize)
            draws[row, 0], draws[row, 1], draws[row, 2] = top, left, int(flip)
    raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return {"jpeg": raw, "crop_flip": draws, "jpeg_path": str(path)}


@dataclass
class JpegBatch:
    """The JPEGs of a batch, kept on the host (no ``to``: Lightning does not move it).

    ``data``: each file's bytes; ``rows``: their rows in the batch; ``draws``: (n, 1 + V, 3)
    (top, left, flip); ``names``: their paths; ``fallback_rows``: the rows whose pixels the
    workers decoded (the batch's ``image``/``views`` hold those rows, in this order);
    ``size``: rows in the batch; ``resize``/``crop``/``views``: the transform's geometry."""

    data: list[torch.Tensor]
    rows: list[int]
    draws: torch.Tensor
    names: list[str]
    fallback_rows: list[int]
    size: int
    resize: int
    crop: int | None
    views: int = 0

    def __len__(self) -> int:
        return self.size


class GpuCollate:
    """Collate of a ``data.decode=gpu`` loader: JPEG items into a :class:`JpegBatch` under
    ``jpeg``, the worker-decoded rows stacked under ``image``/``views`` as usual, every other
    key by ``default_collate``. A batch without JPEG items is collated as on the CPU path."""

    def __init__(self, transform: ImageTransform, views: int = 0) -> None:
        self.resize = transform.resize
        self.crop = transform.crop
        self.views = views

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [i for i, item in enumerate(items) if "jpeg" in item]
        if not rows:
            return collate_images(items)
        fallback = [i for i, item in enumerate(items) if "jpeg" not in item]
        skip = (*JPEG_KEYS, "image", "views")
        batch = default_collate([{k: v for k, v in it.items() if k not in skip} for it in items])
        batch["jpeg"] = JpegBatch(
            data=[items[i]["jpeg"] for i in rows],
            rows=rows,
            draws=torch.stack([items[i]["crop_flip"] for i in rows]),
            names=[items[i]["jpeg_path"] for i in rows],
            fallback_rows=fallback,
            size=len(items),
            resize=self.resize,
            crop=self.crop,
            views=self.views,
        )
        for key in ("image", "views"):
            if fallback and key in items[fallback[0]]:
                batch[key] = stack_images([items[i][key] for i in fallback])
        return batch


def decode_jpegs(
    data: list[torch.Tensor], names: list[str], device: torch.device | str
) -> list[torch.Tensor]:
    """(3, H, W) uint8 RGB images on ``device`` of JPEG byte tensors (on the host), in one
    batched ``decode_jpeg`` call (nvjpeg on CUDA). A failure names the file: the batch is
    decoded again one file at a time to find it."""
    try:
        return list(_decode(data, device))
    except RuntimeError as error:
        for raw, name in zip(data, names, strict=True):
            try:
                _decode(raw, device)
            except RuntimeError as single:
                raise ImageDecodeError(f"{name}: cannot decode image ({single})") from single
        raise ImageDecodeError(f"cannot decode a batch of JPEGs ({error})") from error


def _decode(data: Any, device: torch.device | str) -> Any:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_batch(batch: Any, device: torch.device | str | None = None) -> Any:
    """A ``data.decode=gpu`` batch with its JPEGs decoded, resized, cropped and flipped on
    ``device`` (default: where the batch's tensors are) and merged with the worker-decoded
    rows: ``image`` (B, 3, S, S) and, with views, ``views`` (B, V, 3, S, S), uint8. Other
    batches are returned unchanged."""
    if not isinstance(batch, dict) or not isinstance(batch.get("jpeg"), JpegBatch):
        return batch
    jpegs: JpegBatch = batch.pop("jpeg")
    if device is None:
        device = next(
            (v.device for v in batch.values() if isinstance(v, torch.Tensor)), torch.device("cpu")
        )
    size = jpegs.resize
    images = []
    for pixels in decode_jpegs(jpegs.data, jpegs.names, device):
        if pixels.shape[-2:] != (size, size):
            pixels = F.resize(pixels, [size, size], antialias=True)
        images.append(pixels)
    draws = jpegs.draws.tolist()  # on the host: no device sync

    def cut(pixels: torch.Tensor, draw: list[int]) -> torch.Tensor:
        if jpegs.crop is None:
            return pixels
        top, left, flip = draw
        pixels = pixels[..., top : top + jpegs.crop, left : left + jpegs.crop]
        return pixels.flip(-1) if flip else pixels

    out: list[Any] = [None] * jpegs.size
    out_views: list[Any] = [None] * jpegs.size
    for j, row in enumerate(jpegs.rows):
        out[row] = cut(images[j], draws[j][0])
        if jpegs.views:
            out_views[row] = torch.stack([cut(images[j], d) for d in draws[j][1:]])
    for k, row in enumerate(jpegs.fallback_rows):
        out[row] = batch["image"][k].to(device)
        if jpegs.views:
            out_views[row] = batch["views"][k].to(device)
    batch["image"] = torch.stack(out)
    if jpegs.views:
        batch["views"] = torch.stack(out_views)
    return batch
