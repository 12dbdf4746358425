"""load_rgb on the files real datasets contain: odd modes, EXIF rotation, broken and huge files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image
from tiny_datasets import photo, png_bomb_header

from elta_lightning.datamodules.images import ImageDecodeError, load_rgb


def pixel(image: Image.Image, x: int = 0, y: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(image)[y, x])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # stored lying down: rotate 90 degrees clockwise
    Image.fromarray(array).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    image = load_rgb(tmp_path / "rotated.jpg")
    assert image.size == (20, 40)
    assert pixel(image, 10, 5)[0] > 200 and pixel(image, 10, 35)[0] < 50  # red now on top


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("L", 128, (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("1", 1, (255, 255, 255)),
        ("YCbCr", (76, 85, 255), (254, 0, 0)),
    ],
)
def test_colour_modes_become_rgb(tmp_path: Path, mode: str, colour, expected) -> None:
    path = tmp_path / f"{mode}.jpg" if mode != "1" else tmp_path / "bilevel.png"
    Image.new(mode, (16, 16), colour).save(path, quality=95)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (16, 16)
    assert np.abs(np.subtract(pixel(image, 8, 8), expected)).max() <= 3


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    image = load_rgb(tmp_path / "rgba.png")
    assert pixel(image, 4, 4) == (255, 255, 255) and pixel(image, 0, 0) == (0, 0, 255)
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la.png")
    assert pixel(load_rgb(tmp_path / "la.png")) == (255, 255, 255)
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    image = load_rgb(tmp_path / "palette.png")
    assert pixel(image) == (255, 255, 255) and pixel(image, 1, 1) == (0, 255, 0)
    palette.save(tmp_path / "palette.gif")
    assert pixel(load_rgb(tmp_path / "palette.gif"), 1, 1) == (0, 255, 0)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.float64).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (4, 1))).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    grey = np.asarray(load_rgb(tmp_path / "deep.png"))[0, :, 0].astype(int)
    assert grey[0] == 0 and grey[-1] == 255 and abs(grey[128] - 128) <= 1
    assert np.all(np.diff(grey) >= 0)


def test_float_and_32_bit_images(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    assert pixel(load_rgb(tmp_path / "float.tif")) == (128, 128, 128)
    Image.fromarray(np.full((4, 4), 200, dtype=np.int32)).save(tmp_path / "int.tif")
    assert pixel(load_rgb(tmp_path / "int.tif")) == (200, 200, 200)


def test_draft_decodes_large_jpegs_at_reduced_scale(tmp_path: Path) -> None:
    photo(0, (1600, 1200)).save(tmp_path / "big.jpg", quality=90)
    assert load_rgb(tmp_path / "big.jpg").size == (1600, 1200)
    assert load_rgb(tmp_path / "big.jpg", draft_size=300).size == (400, 300)
    assert load_rgb(tmp_path / "big.jpg", draft_size=600).size == (800, 600)
    assert load_rgb(tmp_path / "big.jpg", draft_size=601).size == (1600, 1200)  # never below
    photo(0, (200, 100)).save(tmp_path / "small.png")
    assert load_rgb(tmp_path / "small.png", draft_size=20).size == (200, 100)


def broken_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files every loader meets sooner or later, with the message each must produce."""
    photo(1, (320, 240)).save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("these are not pixels\n")
    (folder / "folder.jpg").mkdir()
    return {
        "missing": (folder / "absent.jpg", "image file not found"),
        "truncated": (folder / "truncated.jpg", "cannot decode image .*truncated"),
        "empty": (folder / "empty.jpg", r"empty file \(0 bytes\)"),
        "text": (folder / "notes.jpg", "not an image file"),
        "folder": (folder / "folder.jpg", "is a folder"),
    }


@pytest.mark.parametrize("kind", ["missing", "truncated", "empty", "text", "folder"])
@pytest.mark.parametrize("draft_size", [None, 64])
def test_broken_files_raise_naming_the_file(tmp_path: Path, kind: str, draft_size) -> None:
    path, message = broken_files(tmp_path)[kind]
    with pytest.raises(ImageDecodeError, match=message) as error:
        load_rgb(path, draft_size)
    assert str(error.value).startswith(str(path))


def test_huge_images_are_rejected_before_decoding(tmp_path: Path) -> None:
    png_bomb_header(tmp_path / "bomb.png", 30000)  # 900 MP: Pillow's own hard limit
    with pytest.raises(ImageDecodeError, match="bomb.png: image too large"):
        load_rgb(tmp_path / "bomb.png")
    png_bomb_header(tmp_path / "big.png", 10000)  # 100 MP: above our limit
    with pytest.warns(Image.DecompressionBombWarning):
        with pytest.raises(ImageDecodeError, match=r"10000 x 10000 = 100,000,000 pixels"):
            load_rgb(tmp_path / "big.png")
    photo(2, (64, 64)).save(tmp_path / "ok.jpg")
    with pytest.raises(ImageDecodeError, match="above the limit of 1,000"):
        load_rgb(tmp_path / "ok.jpg", max_pixels=1000)
