"""`elta compare-train` / `make compare`: every (method, seed) trained with one budget into
findable run folders, finished pairs skipped on a second call, then one comparison report."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from elta_lightning.cli import main
from elta_lightning.compare import comparison_name, train_and_compare
from elta_lightning.config import ConfigError, load_config

BUDGET = ["trainer.max_epochs=1"]


def _budget(tiny_overrides: list[str]) -> list[str]:
    """The tiny settings without their method (compare-train sets methods itself)."""
    return [o for o in tiny_overrides if not o.startswith("method=")] + BUDGET


@pytest.mark.slow
def test_compare_train_trains_each_pair_once_and_reports(tiny_overrides, tmp_path) -> None:
    overrides = _budget(tiny_overrides)
    report = train_and_compare(["vanilla", "lds"], 2, overrides, out=str(tmp_path / "report"))
    name = comparison_name(load_config(overrides))
    runs = Path(load_config(overrides).runs_dir) / "synthetic"
    folders = sorted(runs.glob(f"*/{name}-seed*"))
    assert [f"{f.parent.name}/{f.name}" for f in folders] == [
        f"{m}/{name}-seed{s}" for m in ("lds", "vanilla") for s in (1, 2)
    ]
    configs = [OmegaConf.load(f / "config.yaml") for f in folders]
    for key in ("data", "model", "optim", "trainer"):  # one budget
        assert all(c[key] == configs[0][key] for c in configs), key
    assert {c.logger.group for c in configs} == {name}
    assert (tmp_path / "report" / "report.md").is_file() and report.summary()
    stamps = {f: (f / "metrics.json").stat().st_mtime_ns for f in folders}
    train_and_compare(["vanilla", "lds"], 2, overrides, out=str(tmp_path / "again"))
    assert {f: (f / "metrics.json").stat().st_mtime_ns for f in folders} == stamps  # skipped
    # an interrupted pair (no metrics.json) is trained again; the others stay
    interrupted = folders[0]
    (interrupted / "metrics.json").unlink()
    train_and_compare(["vanilla", "lds"], 2, overrides, out=str(tmp_path / "third"))
    assert json.loads((interrupted / "metrics.json").read_text())["test/srcc"] is not None
    assert all(stamps[f] == (f / "metrics.json").stat().st_mtime_ns for f in folders[1:])


@pytest.mark.slow
def test_a_finished_run_of_another_config_is_not_overwritten(tiny_overrides, tmp_path) -> None:
    overrides = _budget(tiny_overrides)
    train_and_compare(["vanilla"], 1, overrides, out=str(tmp_path / "report"))
    name = comparison_name(load_config(overrides))
    folder = Path(load_config(overrides).runs_dir) / "synthetic" / "vanilla" / f"{name}-seed1"
    stored = OmegaConf.load(folder / "config.yaml")
    stored.model.hidden_dim = 7  # as if the recipe had changed since
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(stored))
    with pytest.raises(ConfigError, match="model.hidden_dim"):
        train_and_compare(["vanilla"], 1, overrides, out=str(tmp_path / "again"))


def test_compare_train_refuses_per_run_keys(capsys) -> None:
    assert main(["compare-train", "method=elta", "--methods", "vanilla", "--seeds", "1"]) == 2
    assert "drop 'method=elta'" in capsys.readouterr().err
