"""``data.decode=gpu``: JPEG bytes from the workers, decoded, resized, cropped on the device.

On any machine: the start-up error without CUDA, the item format (bytes + crop/flip draws for
ordinary JPEGs, worker-decoded pixels for every other file), and a CPU emulation of the device
step (:func:`decode_batch` on CPU, ``decode_jpeg`` by libjpeg-turbo) against the CPU path with
the same seed: at most 1 grey level per pixel (the fast path's tolerance; the images are less
than twice the resize on a side, so the CPU path decodes them at full size too).

On CUDA (skipped elsewhere): nvjpeg against the CPU path. Tolerance: at most 8 grey levels per
pixel and a mean below 1 level: nvjpeg's IDCT and chroma upsampling are not libjpeg-turbo's
(a few levels on edges), and uint8 CUDA images are resized in float32 then rounded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from tiny_datasets import TinyDataset, photo

from elta_lightning.config import TransformConfig
from elta_lightning.datamodules import build_datamodule, gpu_decode
from elta_lightning.datamodules.base import IAADataset, build_transform
from elta_lightning.datamodules.gpu_decode import GpuCollate, JpegBatch, decode_batch
from elta_lightning.datamodules.images import ImageDecodeError
from elta_lightning.datamodules.labels import LabelTable
from elta_lightning.datamodules.transforms import collate_images
from elta_lightning.errors import ConfigError

pytest.importorskip("simplejpeg", reason="the eligibility test is the fast path's (simplejpeg)")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CPU_LEVELS = 1  # CPU emulation vs CPU path
GPU_LEVELS, GPU_MEAN_LEVELS = 8, 1.0  # nvjpeg vs libjpeg-turbo, see the module docstring
TRANSFORMS = TransformConfig(train_resize=48, crop=40, eval_resize=40)


def write_files(folder: Path) -> dict[str, bool]:
    """Image files -> whether the GPU path takes them (ordinary JPEGs) or leaves them to the
    workers. Sizes below twice the resize: the CPU path decodes them at full size."""
    folder.mkdir(parents=True, exist_ok=True)
    photo(1, (80, 60)).save(folder / "baseline.jpg", quality=90)
    photo(2, (64, 90)).save(folder / "progressive.jpg", quality=85, progressive=True)
    photo(3, (70, 70)).save(folder / "444.jpg", quality=95, subsampling=0)
    photo(4, (72, 50)).convert("L").save(folder / "grey.jpg", quality=90)
    photo(5, (48, 48)).save(folder / "exact.jpg", quality=90)  # already the resize: no resize
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    photo(6, (80, 60)).save(folder / "rotated.jpg", quality=90, exif=exif)
    photo(7, (80, 60)).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    photo(8, (60, 80)).save(folder / "plain.png")
    return {
        "baseline.jpg": True,
        "progressive.jpg": True,
        "444.jpg": True,
        "grey.jpg": True,
        "exact.jpg": True,
        "rotated.jpg": False,
        "cmyk.jpg": False,
        "plain.png": False,
    }


def dataset(folder: Path, names: list[str], train: bool, decode: str, views: int = 0):
    table = LabelTable(names, np.linspace(1, 9, len(names)), sources=[f"l:{i}" for i in names])
    transform = build_transform(TRANSFORMS, train=train, normalise=False)  # as under a Trainer
    data = IAADataset(table, folder, transform, views=views if train else 0)
    data.decode = decode
    return data


def batches(data: IAADataset, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    return [data[i] for i in range(len(data))]


def assert_close_pixels(got: torch.Tensor, expected: torch.Tensor, levels: int, mean=None):
    assert got.shape == expected.shape and got.dtype == expected.dtype == torch.uint8
    difference = (got.cpu().to(torch.int16) - expected.cpu().to(torch.int16)).abs()
    assert int(difference.max()) <= levels
    if mean is not None:
        assert float(difference.float().mean()) < mean


def test_gpu_decoding_without_cuda_is_a_config_error(
    tiny_ava: TinyDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="data.decode=gpu needs a CUDA device; this machine"):
        build_datamodule(replace(tiny_ava.cfg, decode="gpu"))
    with pytest.raises(ConfigError, match="data.decode must be one of cpu, gpu"):
        gpu_decode.check_decode("tpu")
    build_datamodule(replace(tiny_ava.cfg, decode="cpu"))  # the default needs nothing


def test_items_carry_jpeg_bytes_and_draws_or_decoded_pixels(tmp_path: Path) -> None:
    takes = write_files(tmp_path)
    names = sorted(takes)
    data = dataset(tmp_path, names, train=True, decode="gpu", views=2)
    cpu = dataset(tmp_path, names, train=True, decode="cpu", views=2)
    for index, name in enumerate(names):
        torch.manual_seed(index)
        item = data[index]
        assert item["index"] == index and item["score"] == data.scores[index]
        if takes[name]:
            assert "image" not in item and "views" not in item
            assert item["jpeg"].dtype == torch.uint8 and item["jpeg"].dim() == 1
            assert item["jpeg"].numpy().tobytes() == (tmp_path / name).read_bytes()
            assert item["crop_flip"].shape == (3, 3) and item["jpeg_path"].endswith(name)
            # the draws are the CPU transform's, in its order: image, then each view
            torch.manual_seed(index)
            transform = cpu.transform
            expected = [transform.draw_crop_flip(48, 48) for _ in range(3)]
            assert item["crop_flip"].tolist() == [[t, left, int(f)] for t, left, f in expected]
        else:
            assert "jpeg" not in item and "crop_flip" not in item
            assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 40, 40)
            assert item["views"].shape == (2, 3, 40, 40)
    # eval items carry no draws to speak of, and a loader without a Trainer decodes on the CPU
    evaluation = dataset(tmp_path, names, train=False, decode="gpu")
    assert evaluation[0]["crop_flip"].tolist() == [[0, 0, 0]]
    evaluation.transform.normalise = True
    assert evaluation[0]["image"].dtype == torch.float32


@pytest.mark.parametrize(("train", "views"), [(True, 0), (True, 2), (False, 0)])
def test_the_device_step_emulated_on_cpu_gives_the_cpu_paths_pixels(
    tmp_path: Path, train: bool, views: int
) -> None:
    takes = write_files(tmp_path)
    names = sorted(takes)
    cpu = dataset(tmp_path, names, train, "cpu", views)
    gpu = dataset(tmp_path, names, train, "gpu", views)
    expected = collate_images(batches(cpu, seed=3))
    raw = GpuCollate(gpu.transform, gpu.views)(batches(gpu, seed=3))
    jpegs = raw["jpeg"]
    assert isinstance(jpegs, JpegBatch) and len(jpegs) == len(names)
    assert [names[r] for r in jpegs.rows] == [n for n in names if takes[n]]
    assert raw["image"].shape == (sum(not t for t in takes.values()), 3, 40, 40)
    got = decode_batch(raw, device="cpu")
    assert "jpeg" not in got
    assert_close_pixels(got["image"], expected["image"], CPU_LEVELS)
    if views:
        assert got["views"].shape == (len(names), views, 3, 40, 40)
        assert_close_pixels(got["views"], expected["views"], CPU_LEVELS)
    assert torch.equal(got["index"], expected["index"])
    assert torch.equal(got["score"], expected["score"])


def test_a_batch_of_files_the_workers_decode_is_an_ordinary_batch(tmp_path: Path) -> None:
    write_files(tmp_path)
    gpu = dataset(tmp_path, ["cmyk.jpg", "plain.png"], True, "gpu")
    batch = GpuCollate(gpu.transform)(batches(gpu, seed=0))
    assert "jpeg" not in batch and batch["image"].shape == (2, 3, 40, 40)
    assert decode_batch(batch) is batch


def test_a_corrupt_jpeg_is_named_by_the_device_step(tmp_path: Path) -> None:
    write_files(tmp_path)
    data = (tmp_path / "baseline.jpg").read_bytes()
    (tmp_path / "broken.jpg").write_bytes(data[: data.index(b"\xff\xda") + 40])  # truncated
    gpu = dataset(tmp_path, ["baseline.jpg", "broken.jpg"], True, "gpu")
    raw = GpuCollate(gpu.transform)(batches(gpu, seed=0))
    assert len(raw["jpeg"].rows) == 2  # headers are fine: both left to the device
    with pytest.raises(ImageDecodeError, match="broken.jpg: cannot decode image"):
        decode_batch(raw, device="cpu")


def test_a_trainer_driven_loader_decodes_in_on_after_batch_transfer(
    tiny_ava: TinyDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DataModule's wiring: GpuCollate under a Trainer, decode + normalise after the move
    (emulated on CPU: a CPU Trainer, with CUDA claimed present for the start-up check)."""
    # eval at 40 (not 32): the 96 x 72 photos then decode at full size on the CPU path too
    cfg = replace(tiny_ava.cfg, num_workers=0)
    cfg = replace(cfg, transforms=replace(cfg.transforms, eval_resize=40))
    expected_dm = build_datamodule(cfg)
    expected_dm.train_views = 2
    expected_dm.setup()
    expected_dm.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dm = build_datamodule(replace(cfg, decode="gpu"))
    dm.train_views = 2
    dm.setup()
    dm.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    for loader in ("train_dataloader", "test_dataloader"):
        torch.manual_seed(0)
        expected = expected_dm.on_after_batch_transfer(
            next(iter(getattr(expected_dm, loader)())), 0
        )
        torch.manual_seed(0)
        raw = next(iter(getattr(dm, loader)()))
        assert isinstance(raw["jpeg"], JpegBatch)
        got = dm.on_after_batch_transfer(raw, 0)
        assert got["image"].dtype == torch.float32
        # 1 grey level, normalised: 1/255/std
        torch.testing.assert_close(got["image"], expected["image"], rtol=0, atol=1 / 255 / 0.2)
        if loader == "train_dataloader":
            torch.testing.assert_close(got["views"], expected["views"], rtol=0, atol=1 / 255 / 0.2)


@CUDA
@pytest.mark.parametrize(("train", "views"), [(True, 2), (False, 0)])
def test_nvjpeg_gives_the_cpu_paths_pixels(tmp_path: Path, train: bool, views: int) -> None:
    takes = write_files(tmp_path)
    names = sorted(takes)
    cpu = dataset(tmp_path, names, train, "cpu", views)
    gpu = dataset(tmp_path, names, train, "gpu", views)
    expected = collate_images(batches(cpu, seed=5))
    raw = GpuCollate(gpu.transform, gpu.views)(batches(gpu, seed=5))
    got = decode_batch(raw, device="cuda")
    assert got["image"].device.type == "cuda"
    assert_close_pixels(got["image"], expected["image"], GPU_LEVELS, GPU_MEAN_LEVELS)
    if views:
        assert_close_pixels(got["views"], expected["views"], GPU_LEVELS, GPU_MEAN_LEVELS)


@CUDA
def test_gpu_decoding_passes_the_start_up_check_on_cuda(tiny_ava: TinyDataset) -> None:
    dm = build_datamodule(replace(tiny_ava.cfg, decode="gpu"))
    assert dm.decode == "gpu"
