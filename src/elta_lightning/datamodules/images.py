"""Image decoding for IAA data: one upright 8-bit RGB PIL image per file, errors naming the file.

Plain ``Image.open(path).convert("RGB")`` gets several real files wrong: it ignores the EXIF
orientation (phone photos lie on their side), turns transparent pixels into whatever colour they
hide (often black), clips 16-bit images to white, decodes a 12-megapixel JPEG at full size only
to shrink it to 300 pixels, and lets decompression bombs through with a warning. :func:`load_rgb`
handles each of these; anything it cannot decode raises :class:`ImageDecodeError`.

:func:`load_rgb_array` is the loaders' fast path to the same pixels: an ordinary JPEG (colour
or grey, upright, within the pixel limit, not truncated) is decoded by libjpeg-turbo through
simplejpeg, straight from the file's bytes into an array, at the DCT scale Pillow's draft would
pick (so the pixels are the same, bit for bit); every other file, and every file simplejpeg
refuses, goes through :func:`load_rgb`, which reports what is wrong with it. Without simplejpeg
installed every file takes the Pillow path.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from elta_lightning.errors import EltaError

try:  # optional: the fast path for ordinary JPEGs (libjpeg-turbo, scaled decoding)
    import simplejpeg
except ImportError:  # pragma: no cover - exercised where simplejpeg is absent
    simplejpeg = None

# Pillow's own limit (about 89.5 megapixels, a 0.25 GB RGB buffer); larger files are rejected.
MAX_PIXELS = 89_478_485

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error)
_JPEG_START = b"\xff\xd8\xff"
_DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # MPO: cameras' JPEG + extra frames (first is read)
# libjpeg colour spaces whose RGB output matches Pillow's (CMYK and YCCK go through Pillow)
_FAST_COLOURSPACES = frozenset({"YCbCr", "Gray", "RGB"})
_XMP_ORIENTATION = re.compile(rb"tiff:Orientation")


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
            if draft_size is not None and image.format in _DRAFT_FORMATS:
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


def load_rgb_array(
    path: str | Path, draft_size: int | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """``np.asarray(load_rgb(path, draft_size, max_pixels))`` as a writable (H, W, 3) uint8
    array, decoded without Pillow where the file is an ordinary JPEG (see the module's
    docstring); same pixels, same errors."""
    pixels = _decode_ordinary_jpeg(Path(path), draft_size, max_pixels)
    if pixels is None:
        pixels = np.array(load_rgb(path, draft_size, max_pixels), dtype=np.uint8)
    return pixels


def draft_scale(width: int, height: int, draft_size: int | None) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) Pillow's ``draft`` picks so that both sides stay
    at least ``draft_size``."""
    if draft_size is None or draft_size <= 0:
        return 1
    room = min(width // draft_size, height // draft_size)
    return next(scale for scale in (8, 4, 2, 1) if room >= scale)


def _decode_ordinary_jpeg(path: Path, draft_size: int | None, max_pixels: int) -> np.ndarray | None:
    """Pixels of an ordinary JPEG, or None where the file needs the full path."""
    if simplejpeg is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None  # missing, a folder, unreadable: load_rgb names the problem
    size = ordinary_jpeg_size(data, max_pixels)
    if size is None:
        return None
    height, width = size
    scale = draft_scale(width, height, draft_size)
    try:  # strict: truncated or corrupt data raises instead of giving grey rows
        return simplejpeg.decode_jpeg(
            data, "RGB", min_height=-(-height // scale), min_width=-(-width // scale)
        )
    except ValueError:
        return None


def ordinary_jpeg_size(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int] | None:
    """(height, width) of ``data`` where it is an ordinary JPEG that the fast path decodes
    itself (YCbCr, grey or RGB coded, upright, within ``max_pixels``; simplejpeg installed),
    else None (the file needs :func:`load_rgb`). Reads the headers only: truncated or corrupt
    image data shows when it is decoded."""
    if simplejpeg is None or not data.startswith(_JPEG_START):
        return None
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colourspace not in _FAST_COLOURSPACES or width * height > max_pixels:
        return None
    if jpeg_orientation(data) != 1:
        return None  # rotated (or unreadable metadata): Pillow applies it
    return height, width


def jpeg_orientation(data: bytes) -> int | None:
    """The orientation of JPEG ``data`` as Pillow's ``getexif()`` reads it: the EXIF tag, else
    1. None where this cannot be sure: unreadable metadata, or no EXIF orientation but an XMP
    packet that names one (Pillow falls back to XMP's ``tiff:Orientation``)."""
    position, end = 2, len(data)
    orientation, xmp_orientation, seen_exif = None, False, False
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more metadata
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = data[position + 4 : position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and not seen_exif:
            seen_exif = True  # Pillow reads the first EXIF block only
            orientation = _exif_orientation(segment[6:])
            if orientation is None:
                return None
        elif marker == 0xE1 and _XMP_ORIENTATION.search(segment):
            xmp_orientation = True
        position += 2 + length
    else:
        return None  # ran off the end before the image data
    if orientation is not None and orientation != 0:
        return orientation
    return None if xmp_orientation else 1


def _exif_orientation(tiff: bytes) -> int | None:
    """Orientation tag (0x0112) of IFD0 of an EXIF TIFF block: its value, 0 if the block has
    none, None if the block is garbled or the tag is not one SHORT."""
    try:
        order = {b"II": "<", b"MM": ">"}[tiff[:2]]
        (offset,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, offset)
        for entry in range(count):
            start = offset + 2 + 12 * entry
            tag, kind, values = struct.unpack_from(order + "HHI", tiff, start)
            if tag == 0x0112:
                if kind != 3 or values != 1:
                    return None
                return struct.unpack_from(order + "H", tiff, start + 8)[0] or None
    except (KeyError, struct.error):
        return None
    return 0


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
