"""W&B through Lightning in offline mode: read back what the run file holds."""

import pytest
from tiny_runs import tiny_run_overrides
from wandb_records import read_run

from elta_lightning.config import load_config
from elta_lightning.run import train, wandb_mode


def test_offline_run_records_group_tags_config_and_metrics(tmp_path, synthetic_cache) -> None:
    overrides = [
        o for o in tiny_run_overrides(synthetic_cache, tmp_path) if not o.startswith("logger.")
    ]
    overrides += [
        "logger.mode=offline",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "seed=7",
    ]
    result = train(load_config(overrides))
    files = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    record = read_run(files[0])
    run = record["run"]
    assert run.run_group == "synthetic"
    assert set(run.tags) >= {"vanilla", "seed=7"}
    assert record["config"]["seed"] == 7
    assert record["config"]["method"]["name"] == "vanilla"
    logged = {key for row in record["history"] for key in row}
    assert {"train/loss", "train/loss_epoch", "val/srcc", "val/srcc_best", "test/srcc"} <= logged
    val_best = [row["val/srcc_best"] for row in record["history"] if "val/srcc_best" in row]
    assert val_best == sorted(val_best)  # a best-so-far never decreases
    assert record["summary"]["test/srcc"] == pytest.approx(result.metrics["test/srcc"], abs=1e-6)


def test_mode_auto_is_offline_without_an_api_key(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    assert wandb_mode("offline") == "offline"
