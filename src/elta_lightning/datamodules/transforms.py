"""The image transforms: integer geometry in the loader, normalisation on the accelerator.

A loader worker does only 8-bit work on each image: resize (torch's antialiased bilinear kernel
for uint8 images, the one torchvision's ``v2.Resize`` runs on them), then the random crop and
flip of the resized pixels; an item is a ``(3, S, S)`` uint8 tensor whose memory stays in the
decoder's channels-last order, and :func:`collate_images` stacks such items without
transposing them (7-9% of a worker's time per image, benchmarks/image_decode.py). After the
batch is on the device, :class:`InputNormaliser` turns it into contiguous normalised float32
(4x less host-to-device traffic than float images, and no float work in the workers). Both
ends run exactly the operations of the former float pipeline (``v2.ToImage``, ``Resize``,
``RandomCrop``, ``RandomHorizontalFlip``, ``ToDtype(scale=True)``, ``Normalize``), drawing
the same random numbers in the same order, so a seeded run sees the same pixels as before.

:class:`ImageTransform` with ``normalise=True`` (the default) normalises on the host instead,
for callers that index a dataset directly or iterate a loader without a Trainer; the
DataModules switch it off when a Trainer drives them (their ``on_after_batch_transfer``
normalises on the device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch.utils.data import default_collate, get_worker_info

from elta_lightning.models.backbone import IMAGENET_MEAN, IMAGENET_STD


class _TransformSettings(Protocol):  # TransformConfig, or the same node of a DictConfig
    train_resize: int
    crop: int
    eval_resize: int
    hflip: bool
    mean: Sequence[float] | None
    std: Sequence[float] | None


def normalisation(cfg: _TransformSettings) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input normalisation: the config's, or ImageNet's where unset
    (``load_config`` fills them in from the backbone's pretrained config)."""
    mean = IMAGENET_MEAN if cfg.mean is None else tuple(float(v) for v in cfg.mean)
    std = IMAGENET_STD if cfg.std is None else tuple(float(v) for v in cfg.std)
    return mean, std


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 view of an RGB image's pixels (channels interleaved in memory, as
    torchvision's ``pil_to_tensor`` gives them; the resize kernel is fastest on that layout)."""
    pixels = np.array(image, dtype=np.uint8, copy=True)  # writable: torch needs that
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got mode {image.mode} of shape {pixels.shape}")
    return torch.from_numpy(pixels).permute(2, 0, 1)


def normalise_images(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) in any memory order -> contiguous float32
    ``(x / 255 - mean) / std``.

    The operations of ``v2.ToDtype(float32, scale=True)`` then ``v2.Normalize`` in their order
    (multiply by 1/255, subtract, divide), so the result is bit-identical to theirs on the same
    device. ``mean`` and ``std``: float32 (3, 1, 1) on the images' device.
    """
    return images.contiguous().to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


IMAGE_KEYS = ("image", "views")


def channels_last_uint8(images: Any) -> bool:
    """A uint8 (..., 3, H, W) tensor whose channels are interleaved in memory (stride 1)."""
    return (
        isinstance(images, torch.Tensor)
        and images.dtype == torch.uint8
        and images.dim() >= 3
        and images.stride(-3) == 1
    )


def stack_images(images: Sequence[torch.Tensor], shared: bool | None = None) -> torch.Tensor:
    """Stack uint8 (..., 3, H, W) images with interleaved channels into (B, ..., 3, H, W),
    copying rows of pixels as they lie instead of transposing to planes; the result keeps the
    channels-last order. ``shared`` (default: inside a loader worker) allocates it in shared
    memory, as ``default_collate`` does, so it reaches the main process without a copy."""
    rows = [image.movedim(-3, -1) for image in images]
    out = None
    if get_worker_info() is not None if shared is None else shared:
        numel = sum(row.numel() for row in rows)
        storage = rows[0]._typed_storage()._new_shared(numel, device=rows[0].device)
        out = rows[0].new(storage).resize_(len(rows), *rows[0].shape)
    return torch.stack(rows, 0, out=out).movedim(-1, -3)


def collate_images(items: list[Any]) -> Any:
    """``default_collate``, except for ``image``/``views`` tensors with interleaved channels (the
    uint8 items of :class:`ImageTransform`): :func:`stack_images` stacks them."""
    first = items[0]
    if not isinstance(first, dict):
        return default_collate(items)
    keys = [key for key in IMAGE_KEYS if channels_last_uint8(first.get(key))]
    if not keys:
        return default_collate(items)
    rest = default_collate([{k: v for k, v in item.items() if k not in keys} for item in items])
    return {**rest, **{key: stack_images([item[key] for item in items]) for key in keys}}


class ImageTransform:
    """PIL RGB image (or (3, H, W) uint8 tensor) -> (3, S, S) tensor.

    Train (``crop`` set): resize to ``resize`` x ``resize``, random ``crop`` x ``crop`` crop,
    random horizontal flip (``hflip``); eval: resize to ``resize`` x ``resize``. The output is
    uint8 with interleaved channels in memory (not contiguous; :func:`collate_images` stacks it)
    when ``normalise`` is false, else contiguous float32 normalised by ``mean``/``std``. Random
    numbers come from torch's generator (seeded per loader worker), drawn as torchvision's v2
    transforms draw them.
    """

    def __init__(
        self,
        resize: int,
        crop: int | None,
        hflip: bool,
        mean: Sequence[float],
        std: Sequence[float],
        normalise: bool = True,
    ) -> None:
        if crop is not None and crop > resize:
            raise ValueError(f"crop {crop} is larger than the resized image ({resize})")
        self.resize = resize
        self.crop = crop
        self.hflip = hflip
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.normalise = normalise
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_config(
        cls, cfg: _TransformSettings, train: bool, normalise: bool = True
    ) -> ImageTransform:
        """The authors' pipeline: train = resize, random crop, flip; eval = resize to the crop
        size."""
        mean, std = normalisation(cfg)
        if train:
            return cls(cfg.train_resize, cfg.crop, cfg.hflip, mean, std, normalise)
        return cls(cfg.eval_resize, None, False, mean, std, normalise)

    @property
    def draft_size(self) -> int:
        """The smallest side a decoder may shrink an image to before this transform."""
        return self.resize

    @property
    def size(self) -> int:
        """Side of the output image."""
        return self.resize if self.crop is None else self.crop

    def normaliser(self) -> InputNormaliser:
        """What turns this transform's uint8 output into its float output, on any device."""
        return InputNormaliser(self.mean, self.std)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        pixels = image if isinstance(image, torch.Tensor) else pil_to_uint8(image)
        if pixels.shape[-2:] != (self.resize, self.resize):
            pixels = F.resize(pixels, [self.resize, self.resize], antialias=True)
        if self.crop is not None:
            pixels = self._random_crop_flip(pixels)
        if self.normalise:
            return normalise_images(pixels, self._mean, self._std)
        return pixels

    def _random_crop_flip(self, pixels: torch.Tensor) -> torch.Tensor:
        top, left, flip = self.draw_crop_flip(pixels.shape[-2], pixels.shape[-1])
        return self.crop_flip(pixels, top, left, flip)

    def draw_crop_flip(self, height: int, width: int) -> tuple[int, int, bool]:
        """(top, left, flip) of one random crop of a ``height`` x ``width`` image, drawn from
        torch's generator as torchvision's v2 transforms draw them. Train transforms only."""
        # v2.RandomCrop: a row offset, then a column offset, each only where there is slack
        crop = self.crop
        top = int(torch.randint(0, height - crop + 1, size=())) if height > crop else 0
        left = int(torch.randint(0, width - crop + 1, size=())) if width > crop else 0
        # v2.RandomHorizontalFlip(p=0.5): flip when a uniform draw is below 0.5
        flip = self.hflip and bool(torch.rand(1) < 0.5)
        return top, left, flip

    def crop_flip(self, pixels: torch.Tensor, top: int, left: int, flip: bool) -> torch.Tensor:
        """The ``crop`` x ``crop`` window of ``pixels`` at (top, left), mirrored if ``flip``."""
        pixels = pixels[..., top : top + self.crop, left : left + self.crop]
        return pixels.flip(-1) if flip else pixels

    def __repr__(self) -> str:
        crop = f", crop={self.crop}, hflip={self.hflip}" if self.crop is not None else ""
        return (
            f"{type(self).__name__}(resize={self.resize}{crop}, normalise={self.normalise}, "
            f"mean={self.mean}, std={self.std})"
        )


class InputNormaliser:
    """Turns the uint8 ``image`` and ``views`` of a batch into normalised float32 where they
    are: called from ``on_after_batch_transfer``, on the accelerator. Float tensors pass
    unchanged. ``mean``/``std`` tensors are made once per device (no copy per step)."""

    keys = ("image", "views")

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1).to(device)
            std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1).to(device)
            self._constants[device] = (mean, std)
        return self._constants[device]

    def __call__(self, batch: Any) -> Any:
        if not isinstance(batch, dict):
            return batch
        for key in self.keys:
            images = batch.get(key)
            if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
                batch[key] = normalise_images(images, *self.constants(images.device))
        return batch
