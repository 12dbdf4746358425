"""Speed settings of the training step on the CPU: channels_last gives the same features,
gradient checkpointing and torch.compile (aot_eager: graph capture without compiling kernels)
train and keep checkpoint keys, precision ``auto`` is fp32 without a GPU, and Adam is fused only
on CUDA."""

import math

import pytest
import torch

from elta_lightning.checkpoints import load_checkpoint
from elta_lightning.config import load_config
from elta_lightning.models.backbone import Backbone
from elta_lightning.run import resolve_precision, train


def test_channels_last_gives_the_same_features() -> None:
    backbone = Backbone("test_convnext").eval()
    images = torch.randn(3, 3, 32, 32)
    plain = backbone(images)
    assert backbone.is_convolutional
    backbone.use_channels_last()
    assert torch.allclose(backbone(images), plain, atol=1e-5)


def test_precision_auto_is_fp32_without_a_gpu() -> None:
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto") == "32-true"


@pytest.mark.slow
def test_checkpointed_compiled_channels_last_run_trains_and_reloads(tiny_overrides) -> None:
    overrides = [
        *tiny_overrides,
        "trainer.max_epochs=1",
        "model.grad_checkpointing=true",
        "model.channels_last=true",
        "model.compile=true",
        "model.compile_backend=aot_eager",
    ]
    torch._dynamo.reset()
    result = train(load_config(overrides))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # compiled for real
    assert math.isfinite(result.metrics["test/mae"]) and -1 <= result.metrics["test/srcc"] <= 1
    module = load_checkpoint(result.run_dir / "checkpoints" / "last.ckpt")
    saved = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == set(module.state_dict())  # no _orig_mod. prefixes
    optimizer = saved["optimizer_states"][0]["param_groups"][0]
    assert optimizer["fused"] is False  # fused Adam only on CUDA
