"""Every method of experiments/ trains end to end on the built-in data set through `elta train`
(real JPEGs, DataModule, Trainer, checkpoints), alone and in combinations, and each run's
checkpoint reloads with its parts' state."""

from pathlib import Path

import pytest
import torch

from elta_lightning.checkpoints import load_checkpoint
from elta_lightning.config import available, load_config
from elta_lightning.run import train

#: (method, extra parts) pairs: every recipe alone, and the combinations users list.
RUNS = [
    *[(name, "") for name in available("experiments") if name != "rrt"],
    ("lds", "tfa"),
    ("fds", "flsa"),
    ("balanced_mse", "tfa,flsa"),
    ("sqinv", "ranksim,cmixup"),
]


def _train(overrides: list[str], method: str, parts: str, run_id: str):
    extra = [f"parts={parts}"] if parts else []
    cfg = load_config([*overrides, f"method={method}", *extra, f"run_id={run_id}"])
    return cfg, train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "parts"), RUNS, ids=[f"{m}+{p}" if p else m for m, p in RUNS])
def test_method_trains_and_its_checkpoint_reloads_with_its_parts(tiny_overrides, method, parts):
    cfg, result = _train(tiny_overrides, method, parts, "run")
    metrics = result.metrics
    assert 0 <= metrics["test/acc"] <= 1 and torch.isfinite(torch.tensor(metrics["test/mae"]))
    for key in ("test/mae_many", "test/mae_medium", "test/mae_few", "test/mae_balanced"):
        assert key in metrics
    expected = list(cfg.method.parts)
    assert expected == [
        *load_config([f"method={method}"]).method.parts,
        *filter(None, parts.split(",")),
    ]
    path = Path(result.run_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    module = load_checkpoint(path)
    assert [part.name for part in module.parts] == expected
    reloaded = module.state_dict()
    assert set(saved) == set(reloaded)
    for key, value in saved.items():
        assert torch.equal(value, reloaded[key]), key
    state_keys = {key.split(".")[1] for key in saved if key.startswith("part_states.")}
    assert state_keys == {
        p.name for p in module.parts if p.state is not None and p.state.state_dict()
    }


@pytest.mark.slow
def test_rrt_stage_composes_with_a_part(tiny_overrides) -> None:
    _, first = _train(tiny_overrides, "vanilla", "", "stage1")
    checkpoint = Path(first.run_dir) / "checkpoints" / "last.ckpt"
    cfg = load_config([*tiny_overrides, "method=rrt", "parts=lds", f"init_from={checkpoint}"])
    assert cfg.stage == "rrt" and cfg.method.name == "rrt+lds"
    result = train(cfg)
    module = load_checkpoint(Path(result.run_dir) / "checkpoints" / "last.ckpt")
    assert [part.name for part in module.parts] == ["lds"]
    before = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in module.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, before[key]), key
