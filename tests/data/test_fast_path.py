"""The fast data path gives the pixels of the full path.

- Decoding: ``load_rgb_array`` (libjpeg-turbo through simplejpeg, DCT-scaled) against
  ``load_rgb`` (Pillow, draft) on ordinary JPEGs. Tolerance: at most 1 grey level per pixel and
  a mean below 0.01 level. Both are libjpeg-turbo's accurate integer IDCT at the same DCT scale
  with the same upsampling, so they agree exactly on this machine (measured: 0); the one level
  leaves room for another build of libjpeg-turbo (Pillow and simplejpeg bundle their own).
  Files the fast path must not take (EXIF or XMP orientation, CMYK, PNG, truncated, too large)
  give the full path's pixels or its error, exactly.
- Normalising: uint8 images normalised by ``InputNormaliser`` (on the device in training)
  against the former float pipeline (``v2.ToImage``, ``Resize``, ``RandomCrop``, flip,
  ``ToDtype``, ``Normalize``) with the same seed: bit-identical (tolerance 0, the same float32
  operations in the same order; on CUDA too, where a GPU is present).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from test_images import broken_files
from tiny_datasets import TinyDataset, photo, png_bomb_header
from torchvision.transforms import v2

from elta_lightning.config import TransformConfig
from elta_lightning.datamodules import build_datamodule, images
from elta_lightning.datamodules.base import build_transform, loader_settings
from elta_lightning.datamodules.images import (
    ImageDecodeError,
    jpeg_orientation,
    load_rgb,
    load_rgb_array,
)
from elta_lightning.datamodules.transforms import ImageTransform, InputNormaliser, normalisation

simplejpeg = pytest.importorskip("simplejpeg", reason="the fast JPEG path needs simplejpeg")

MAX_LEVELS, MEAN_LEVELS = 1, 0.01  # decoding tolerance, see the module docstring


def assert_same_pixels(fast: np.ndarray, full: np.ndarray) -> None:
    assert fast.shape == full.shape and fast.dtype == full.dtype == np.uint8
    difference = np.abs(fast.astype(np.int16) - full.astype(np.int16))
    assert difference.max() <= MAX_LEVELS and difference.mean() < MEAN_LEVELS


def fast_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a fall back to Pillow fail the test: the file must take the fast path."""

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to load_rgb")

    monkeypatch.setattr(images, "load_rgb", no_fallback)


ORDINARY = {  # name -> how the JPEG is written
    "baseline 4:2:0": {"quality": 90},
    "progressive": {"quality": 85, "progressive": True},
    "4:4:4": {"quality": 95, "subsampling": 0},
    "4:2:2, optimised": {"quality": 75, "subsampling": 1, "optimize": True},
    "exif, upright": {"quality": 90, "exif": "upright"},
}


@pytest.mark.parametrize("kind", sorted(ORDINARY))
@pytest.mark.parametrize(
    ("size", "draft_size"),
    [((640, 480), None), ((640, 480), 300), ((800, 600), 256), ((1600, 1200), 300), ((97, 61), 8)],
)
def test_ordinary_jpegs_decode_to_the_full_paths_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, size, draft_size
) -> None:
    options = dict(ORDINARY[kind])
    if options.get("exif") == "upright":
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 1
        exif[ExifTags.Base.Make] = "elta"
        options["exif"] = exif
    path = tmp_path / "photo.jpg"
    photo(3, size).save(path, **options)
    full = np.asarray(load_rgb(path, draft_size))
    fast_path_only(monkeypatch)
    assert_same_pixels(load_rgb_array(path, draft_size), full)


def test_grey_rgb_coded_and_mpo_jpegs_take_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo(4, (320, 240)).convert("L").save(tmp_path / "grey.jpg", quality=90)
    photo(5, (320, 240)).save(tmp_path / "rgb.jpg", quality=90, keep_rgb=True)
    photo(6, (640, 480)).save(
        tmp_path / "camera.mpo", format="MPO", save_all=True, append_images=[photo(7, (64, 48))]
    )
    expected = {
        name: np.asarray(load_rgb(tmp_path / name, 150))
        for name in ("grey.jpg", "rgb.jpg", "camera.mpo")
    }
    assert expected["camera.mpo"].shape == (240, 320, 3)  # first frame, drafted like a JPEG
    fast_path_only(monkeypatch)
    for name, full in expected.items():
        assert_same_pixels(load_rgb_array(tmp_path / name, 150), full)


def exif_jpeg(path: Path, orientation: int, size=(40, 20)) -> None:
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:, : size[0] // 2] = (255, 0, 0)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(array).save(path, exif=exif, quality=95)


def test_files_the_fast_path_leaves_to_pillow_give_the_same_pixels(tmp_path: Path) -> None:
    exif_jpeg(tmp_path / "rotated.jpg", 6)
    Image.new("CMYK", (64, 48), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    photo(8, (64, 48)).save(tmp_path / "xmp.jpg", xmp=xmp)
    photo(9, (64, 48)).convert("RGBA").save(tmp_path / "alpha.png")
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.fromarray(ramp).save(tmp_path / "deep16.png")
    for name in ("rotated.jpg", "cmyk.jpg", "xmp.jpg", "alpha.png", "deep16.png"):
        full = np.asarray(load_rgb(tmp_path / name, 16))
        assert np.array_equal(load_rgb_array(tmp_path / name, 16), full), name
    assert load_rgb_array(tmp_path / "rotated.jpg").shape == (40, 20, 3)  # stood up
    assert load_rgb_array(tmp_path / "xmp.jpg").shape == (64, 48, 3)  # XMP's orientation too
    assert load_rgb_array(tmp_path / "cmyk.jpg")[10, 10].tolist() == [255, 0, 0]


@pytest.mark.parametrize("kind", ["missing", "truncated", "empty", "text", "folder"])
def test_broken_files_raise_the_full_paths_error(tmp_path: Path, kind: str) -> None:
    path, message = broken_files(tmp_path)[kind]
    with pytest.raises(ImageDecodeError, match=message) as error:
        load_rgb_array(path, 64)
    assert str(error.value).startswith(str(path))


def test_huge_images_are_still_rejected_before_decoding(tmp_path: Path) -> None:
    photo(2, (64, 64)).save(tmp_path / "ok.jpg")
    with pytest.raises(ImageDecodeError, match="above the limit of 1,000"):
        load_rgb_array(tmp_path / "ok.jpg", max_pixels=1000)
    png_bomb_header(tmp_path / "bomb.png", 30000)
    with pytest.raises(ImageDecodeError, match="bomb.png: image too large"):
        load_rgb_array(tmp_path / "bomb.png")


def test_jpeg_orientation_reads_exif_and_distrusts_xmp(tmp_path: Path) -> None:
    for orientation in (1, 3, 6, 8):
        exif_jpeg(tmp_path / "o.jpg", orientation)
        assert jpeg_orientation((tmp_path / "o.jpg").read_bytes()) == orientation
    photo(1, (32, 32)).save(tmp_path / "plain.jpg")
    assert jpeg_orientation((tmp_path / "plain.jpg").read_bytes()) == 1
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    photo(1, (32, 32)).save(tmp_path / "xmp.jpg", xmp=xmp)
    assert jpeg_orientation((tmp_path / "xmp.jpg").read_bytes()) is None  # Pillow decides
    data = (tmp_path / "plain.jpg").read_bytes()
    assert jpeg_orientation(data[:20]) is None  # cut before the image data


def former_transform(cfg: TransformConfig, train: bool) -> v2.Compose:
    """The float pipeline ``build_transform`` was before the uint8 path."""
    steps = [v2.ToImage()]
    if train:
        steps += [v2.Resize((cfg.train_resize, cfg.train_resize), antialias=True)]
        steps += [v2.RandomCrop(cfg.crop), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize((cfg.eval_resize, cfg.eval_resize), antialias=True)]
    mean, std = normalisation(cfg)
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_uint8_images_normalised_on_the_device_equal_the_float_pipeline(
    tmp_path: Path, device: str, train: bool
) -> None:
    """Exact on the CPU (measured); on CUDA within 1e-6 (a few float32 steps), unmeasured."""
    cfg = TransformConfig(train_resize=72, crop=64, eval_resize=64, mean=(0.5, 0.4, 0.3))
    former = former_transform(cfg, train)
    uint8 = build_transform(cfg, train, normalise=False)
    host_float = build_transform(cfg, train)
    normaliser = InputNormaliser(*normalisation(cfg))
    for seed, size in enumerate([(160, 120), (72, 72), (100, 300)]):
        photo(seed, size).save(tmp_path / "p.jpg", quality=90)
        image = load_rgb(tmp_path / "p.jpg", uint8.draft_size)
        outputs = []
        for transform in (former, host_float, uint8):
            torch.manual_seed(seed)  # the same crop and flip draws
            outputs.append(transform(image))
        reference, host, raw = outputs
        assert raw.dtype == torch.uint8 and raw.shape == (3, 64, 64)
        assert torch.equal(host, reference)  # float on the host: no worker's view of it
        batch = normaliser({"image": raw[None].to(device), "views": raw[None, None].to(device)})
        expected = reference.to(device)
        tolerance = {"rtol": 0.0, "atol": 0.0 if device == "cpu" else 1e-6}
        torch.testing.assert_close(batch["image"][0], expected, **tolerance)
        torch.testing.assert_close(batch["views"][0, 0], expected, **tolerance)


def test_a_trainer_gets_uint8_batches_that_normalise_to_the_float_batches(
    tiny_ava: TinyDataset,
) -> None:
    dm = build_datamodule(replace(tiny_ava.cfg, num_workers=0))
    dm.train_views = 2
    dm.setup()
    torch.manual_seed(0)
    floats = next(iter(dm.train_dataloader()))
    assert floats["image"].dtype == torch.float32
    dm.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    torch.manual_seed(0)
    raw = next(iter(dm.train_dataloader()))
    assert raw["image"].dtype == raw["views"].dtype == torch.uint8
    assert raw["views"].shape == (4, 2, 3, 32, 32)
    moved = dm.on_after_batch_transfer(raw, 0)
    assert torch.equal(moved["image"], floats["image"])
    assert torch.equal(moved["views"], floats["views"])
    assert torch.equal(moved["index"], floats["index"])


def test_worker_processes_give_the_same_eval_batches(tiny_para: TinyDataset) -> None:
    """uint8 batches stacked in shared memory by a worker, normalised after the move, equal
    the float batches of a loader without a Trainer or workers."""
    dm = build_datamodule(replace(tiny_para.cfg, num_workers=0, eval_batch_size=3))
    dm.setup()
    expected = list(dm.test_dataloader())
    worker_dm = build_datamodule(replace(tiny_para.cfg, num_workers=1, eval_batch_size=3))
    worker_dm.setup()
    worker_dm.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    got = list(worker_dm.test_dataloader())
    assert len(got) == len(expected) and got[0]["image"].dtype == torch.uint8
    for raw, floats in zip(got, expected, strict=True):
        moved = worker_dm.on_after_batch_transfer(raw, 0)
        assert moved["image"].is_contiguous()
        assert torch.equal(moved["image"], floats["image"])
        assert torch.equal(moved["index"], floats["index"])


def test_the_transform_is_picklable_and_says_what_it_does() -> None:
    import pickle

    transform = build_transform(TransformConfig(), train=True, normalise=False)
    clone = pickle.loads(pickle.dumps(transform))
    assert isinstance(clone, ImageTransform) and clone.draft_size == 300 and clone.size == 256
    assert "crop=256" in repr(clone) and "normalise=False" in repr(clone)
    with pytest.raises(ValueError, match="crop 320 is larger"):
        ImageTransform(300, 320, True, (0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize(
    ("requested", "accelerator", "processes", "cores", "threads", "expected"),
    [
        # CPU: no workers below 8 cores, a spare core on small machines, never above the cap
        (None, "cpu", 1, 2, 8, (0, False, False, 1)),
        (None, "cpu", 1, 4, 8, (0, False, False, 3)),
        (None, "cpu", 1, 16, 32, (2, False, True, 14)),
        (None, "cpu", 1, 16, 4, (2, False, True, 4)),
        (None, "cpu", 2, 16, 32, (1, False, True, 7)),
        (2, "cpu", 1, 2, 8, (2, False, True, 1)),  # explicit workers, threads still fit
        # accelerators: cores per device - 1, at least 1, at most 16; CUDA pins
        (None, "cuda", 1, 16, None, (15, True, True, None)),
        (None, "cuda", 8, 64, None, (7, True, True, None)),
        (None, "cuda", 1, 96, None, (16, True, True, None)),
        (None, "cuda", 4, 2, None, (1, True, True, None)),
        (0, "cuda", 1, 16, None, (0, True, False, None)),
        (None, "mps", 1, 10, None, (9, False, True, None)),
    ],
)
def test_loader_settings_follow_the_rule(
    requested, accelerator, processes, cores, threads, expected
) -> None:
    settings = loader_settings(requested, accelerator, processes, cores, threads)
    got = (
        settings.num_workers,
        settings.pin_memory,
        settings.persistent_workers,
        settings.torch_threads,
    )
    assert got == expected
