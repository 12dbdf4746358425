"""Image decoding for IAA data: one upright 8-bit RGB PIL image per file, errors naming the file.

Plain ``Image.open(path).convert("RGB")`` gets several real files wrong: it ignores the EXIF
orientation (phone photos lie on their side), turns transparent pixels into whatever colour they
hide (often black), clips 16-bit images to white, decodes a 12-megapixel JPEG at full size only
to shrink it to 300 pixels, and lets decompression bombs through with a warning. :func:`load_rgb`
handles each of these; anything it cannot decode raises :class:`ImageDecodeError`.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from elta_lightning.errors import EltaError

# Pillow's own limit (about 89.5 megapixels, a 0.25 GB RGB buffer); larger files are rejected.
MAX_PIXELS = 89_478_485

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)


class ImageDecodeError(EltaError, ValueError):
    """An image file that is missing, empty, truncated, too large or not an image."""


def load_rgb(
    path: str | Path, draft_size: int | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image.

    ``draft_size``: the smallest side length the caller needs. JPEGs at least twice that size in
    both directions are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (``Image.draft``),
    which is several times faster and never goes below ``draft_size``. Files with more than
    ``max_pixels`` pixels are rejected before decoding (decompression-bomb guard).
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            _check_pixels(path, image, max_pixels)
            if draft_size is not None and image.format == "JPEG":
                image.draft(image.mode, (draft_size, draft_size))
            image.load()
            return to_rgb(upright(image))
    except ImageDecodeError:
        raise
    except FileNotFoundError as error:
        raise ImageDecodeError(f"{path}: image file not found") from error
    except IsADirectoryError as error:
        raise ImageDecodeError(f"{path}: is a folder, expected an image file") from error
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"{path}: image too large ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageDecodeError(f"{path}: {_unidentified(path)}") from error
    except _DECODE_ERRORS as error:
        raise ImageDecodeError(f"{path}: cannot decode image ({error})") from error


def _check_pixels(path: Path, image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{path}: {width} x {height} = {width * height:,} pixels, above the limit of "
            f"{max_pixels:,} (decompression-bomb guard); shrink the file"
        )


def _unidentified(path: Path) -> str:
    """Why Pillow could not identify ``path``: empty file, or not an image format it knows."""
    if path.stat().st_size == 0:
        return "empty file (0 bytes), expected an image"
    return "not an image file (unknown or corrupt format)"


def upright(image: Image.Image) -> Image.Image:
    """``image`` rotated/flipped as its EXIF orientation tag says (the image itself if none)."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of any Pillow mode.

    Transparent pixels (alpha channel, or a palette / single-colour transparency) are composited
    onto white; 16-bit and 32-bit grey levels are scaled to 0..255 instead of clipped; CMYK,
    YCbCr, grey, bilevel and palette images go through Pillow's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        return _high_bit_depth_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Grey images of more than 8 bits: 16-bit integers / 257, floats in [0, 1] x 255."""
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    elif image.mode != "F" and (image.mode.startswith("I;16") or peak > 255.0):
        values = values / 257.0
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
