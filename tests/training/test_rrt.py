"""RRT (regressor re-training) as a stage: `elta train stage=rrt init_from=<ckpt>` re-trains the
head on a frozen backbone that stays in eval mode (weights and BatchNorm statistics unchanged)."""

import pytest
import torch

from elta_lightning.cli import main
from elta_lightning.config import load_config
from elta_lightning.run import train

# test_resnet has BatchNorm layers, whose running statistics would move in train mode
RRT_OVERRIDES = [
    "model.backbone=test_resnet",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
]


@pytest.fixture(scope="module")
def stage_one(tmp_path_factory, synthetic_cache):
    from tiny_runs import tiny_run_overrides

    runs = tmp_path_factory.mktemp("runs")
    overrides = [*tiny_run_overrides(synthetic_cache, runs), *RRT_OVERRIDES]
    result = train(load_config([*overrides, "run_id=stage1"]))
    return overrides, result.run_dir / "checkpoints" / "last.ckpt"


def _state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_rrt_changes_the_head_only_and_keeps_batchnorm_statistics(stage_one) -> None:
    overrides, checkpoint = stage_one
    assert main(["train", *overrides, "stage=rrt", f"init_from={checkpoint}", "run_id=rrt"]) == 0
    runs_dir = load_config(overrides).runs_dir
    after = _state(f"{runs_dir}/synthetic/vanilla/rrt/checkpoints/last.ckpt")
    before = _state(checkpoint)
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any(k.endswith("running_mean") for k in backbone)
    assert any(k.endswith("num_batches_tracked") for k in backbone)
    for key in backbone:  # weights, BatchNorm running statistics and counters
        assert torch.equal(before[key], after[key]), key
    head = [k for k in before if k.startswith("head.")]
    assert head and any(not torch.equal(before[k], after[k]) for k in head)


def test_rrt_without_or_with_a_bad_checkpoint_is_a_clear_error(stage_one, tmp_path, capsys) -> None:
    overrides, checkpoint = stage_one
    assert main(["train", *overrides, "stage=rrt"]) == 2
    assert "init_from" in capsys.readouterr().err
    assert main(["train", *overrides, "stage=rrt", f"init_from={tmp_path / 'none.ckpt'}"]) == 1
    assert "none.ckpt not found" in capsys.readouterr().err
    other = ["model.backbone=test_convnext", "stage=rrt", f"init_from={checkpoint}"]
    assert main(["train", *overrides, *other]) == 1
    assert "does not fit this model" in capsys.readouterr().err
