"""No part makes the host wait for the device in a training step: the whole step (weights,
input and feature transforms, backbone, head, task loss, auxiliary losses, backward) of a model
with each part runs without any syncing operation (``HostSyncRecorder``, the CPU stand-in for
``torch.cuda.set_sync_debug_mode("error")``)."""

import pytest
from sync_check import HostSyncRecorder

from elta_lightning.config import load_config
from elta_lightning.datamodules import build_datamodule
from elta_lightning.models.module import IAAModule
from elta_lightning.parts import PARTS, views_needed
from elta_lightning.run import build_module

#: Part settings that exercise every branch (C-Mixup on the images, Balanced MSE's priors).
VARIANTS = {
    "cmixup": ["method.cmixup.level=inputs"],
    "balanced_mse": ["method.balanced_mse.variant=bni"],
}
CASES = (
    [(name, []) for name in sorted(PARTS)]
    + [(name, extra) for name, extra in VARIANTS.items()]
    + [("balanced_mse", ["method.balanced_mse.variant=gai"])]
)


@pytest.mark.parametrize(
    ("part", "extra"), CASES, ids=[f"{p}{'-' + e[0] if e else ''}" for p, e in CASES]
)
def test_training_step_of_every_part_does_not_sync(tiny_overrides, monkeypatch, part, extra):
    monkeypatch.setattr(IAAModule, "current_epoch", property(lambda self: 1))  # FDS calibrates
    cfg = load_config([*tiny_overrides, "method=vanilla", f"parts={part}", *extra])
    datamodule = build_datamodule(cfg.data)
    datamodule.train_views = views_needed(list(cfg.method.parts))
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    module.step_losses(batch)["loss"].backward()  # warm-up: lazily created generators
    with HostSyncRecorder() as recorder:
        losses = module.step_losses(batch)
        losses["loss"].backward()
    assert recorder.syncs == [], f"{part}: {recorder.syncs}"


def test_the_recorder_catches_a_sync() -> None:
    import torch

    with HostSyncRecorder() as recorder:
        torch.ones(3).sum().item()
    assert recorder.syncs == ["aten._local_scalar_dense.default"]
