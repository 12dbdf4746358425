"""timm backbones that return pooled features, with pretrained weights from the hub or a file."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from elta_lightning.errors import ConfigError, EltaError

NO_WEIGHTS = {"", "none", "false", "no"}
HUB_WEIGHTS = {"hub", "true", "yes"}


#: Normalisation where timm knows none for a backbone (e.g. ``hf-hub:`` names): ImageNet's.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def backbone_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the images a timm backbone was pretrained on (its pretrained config):
    ImageNet's for most, CLIP's for CLIP towers; ImageNet's where timm has no config."""
    try:
        pretrained = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        pretrained = None
    if pretrained is None or pretrained.mean is None or pretrained.std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in pretrained.mean), tuple(float(v) for v in pretrained.std)


class WeightsUnavailableError(EltaError, RuntimeError):
    """Pretrained weights that cannot be loaded; the message says how to provide a local file."""


def _check_name(name: str) -> None:
    base = name.split(".")[0]
    if base.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(base):
        return
    close = difflib.get_close_matches(base, timm.list_models(), n=3)
    raise ConfigError(f"model.backbone: timm has no model {name!r}. Close names: {close}")


def create_backbone(name: str, pretrained: str = "none", drop_path_rate: float = 0.0) -> nn.Module:
    """A timm model without classifier; ``pretrained`` is ``none``, ``hub`` or a weights file."""
    _check_name(name)
    kwargs: dict = {"num_classes": 0}
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    choice = str(pretrained).strip()
    if choice.lower() in NO_WEIGHTS:
        return timm.create_model(name, pretrained=False, **kwargs)
    if choice.lower() in HUB_WEIGHTS:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:  # hub/network errors come in many types
            raise WeightsUnavailableError(
                f"could not download pretrained weights for {name!r} from the model hub "
                f"({type(error).__name__}: {str(error).splitlines()[0]}). Without network access, "
                f"download the weights elsewhere (for example timm's model.safetensors for "
                f"{name!r}) and pass the file: model.pretrained=/path/to/weights.safetensors"
            ) from error
    path = Path(choice).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"model.pretrained: weights file {path} not found. Give a local .pth or .safetensors "
            "file of the backbone's ImageNet weights, 'hub' to download them, or 'none'."
        )
    try:
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    except (RuntimeError, KeyError, ValueError) as error:
        raise WeightsUnavailableError(
            f"model.pretrained: could not load {path} into {name!r}: {str(error).splitlines()[0]}"
        ) from error


class Backbone(nn.Module):
    """Pooled image features of any timm model: ``forward_head(..., pre_logits=True)``."""

    def __init__(self, name: str, pretrained: str = "none", drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.model = create_backbone(name, pretrained, drop_path_rate)
        self.feature_dim = int(
            getattr(self.model, "head_hidden_size", None) or self.model.num_features
        )
        self.channels_last = False

    @property
    def is_convolutional(self) -> bool:
        """True when the model has 2-D convolutions (channels_last speeds those up on GPUs)."""
        return any(isinstance(m, nn.Conv2d) for m in self.model.modules())

    def use_channels_last(self) -> None:
        """Keep weights and inputs in channels_last memory format (same values, faster convs)."""
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True

    def use_grad_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of storing them (timm)."""
        try:
            self.model.set_grad_checkpointing(True)
        except (AttributeError, NotImplementedError, AssertionError) as error:
            raise ConfigError(
                f"model.grad_checkpointing: timm's {self.name!r} does not support gradient "
                f"checkpointing ({type(error).__name__}: {error}); set it to false"
            ) from error

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)
