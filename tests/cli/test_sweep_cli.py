"""`elta sweep` end to end with real tiny runs: the exact command a W&B agent runs for sampled
values (the sweep created with the fixed arguments, the server replaced), a local Optuna sweep
whose trials are normal run folders (a failing trial recorded, the study resumed), and a pruned
trial's run folder and offline W&B run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState
from tiny_runs import tiny_run_overrides
from wandb_records import read_run

from elta_lightning import cli, sweeps
from elta_lightning.sweeps import wandb_agent

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # where the `elta` console script lives


def tiny(cache: Path, runs: Path, epochs: int, **changes: str) -> list[str]:
    """Tiny-run fixed arguments for a sweep (the sweep file sets the method)."""
    words = [w for w in tiny_run_overrides(cache, runs) if not w.startswith("method=")]
    words = [w for w in words if not w.startswith(("trainer.max_epochs=", *changes))]
    return [*words, f"trainer.max_epochs={epochs}", *(f"{k}={v}" for k, v in changes.items())]


def write_sweep(path: Path, parameters: dict, **extra) -> Path:
    config = {
        "method": "grid",
        "metric": {"name": "val/srcc_best", "goal": "maximize"},
        "parameters": parameters,
        **extra,
        "command": ["${env}", "elta", "train", "method=vanilla", "${args_no_hyphens}"],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_study(runs: Path, name: str) -> optuna.Study:
    storage = f"sqlite:///{runs / 'sweeps' / name / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def test_the_agent_command_starts_a_real_run_with_the_sampled_values(
    synthetic_cache, tmp_path, monkeypatch
) -> None:
    import wandb

    created = {}

    def create_sweep(config, entity=None, project=None):  # the server, replaced
        created["config"] = config
        return "abc123"

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example")
    monkeypatch.setattr(wandb_agent, "check_reachable", lambda url, consequence: None)
    monkeypatch.setattr(wandb, "sweep", create_sweep)
    monkeypatch.setattr(wandb, "agent", lambda sweep_id, **kw: created.setdefault("agent", kw))
    runs = tmp_path / "runs"
    fixed = ["dataset=synthetic", *tiny(synthetic_cache, runs, epochs=1)]
    sweeps.run_wandb_sweep("elta", fixed, count=1)  # what `make sweep METHOD=elta COUNT=1` does
    assert created["agent"]["count"] == 1

    sampled = {"optim.lr": 0.0001, "method.flsa.weight": 5, "method.tfa.tau1": 0.2}
    sampled["method.tfa.tau2"] = 7
    assert set(sampled) == set(created["config"]["parameters"])  # batch size: pinned by fixed
    argv = sweeps.agent_command(created["config"], sampled)
    assert argv[:4] == ["/usr/bin/env", "elta", "train", "method=elta"]
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("WANDB_API_KEY")
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (runs / "synthetic" / "elta").iterdir()
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.optim.lr == 0.0001 and cfg.method.flsa.weight == 5.0
    assert (cfg.method.tfa.tau1, cfg.method.tfa.tau2) == (0.2, 7.0)
    assert cfg.data.synthetic.num_train == 96 and cfg.trainer.max_epochs == 1  # fixed arguments
    assert cfg.data.batch_size == 16
    assert (run_dir / "metrics.json").is_file()


def test_local_sweep_real_trials_a_failing_one_and_resume(
    synthetic_cache, tmp_path, capsys
) -> None:
    runs = tmp_path / "runs"
    # a bad precision passes the config checks and fails when the run builds its Trainer
    parameters = {
        "optim.lr": {"values": [0.001, 0.01]},
        "trainer.precision": {"values": ["32-true", "bogus"]},
    }
    path = write_sweep(tmp_path / "grid.yaml", parameters)
    fixed = tiny(synthetic_cache, runs, epochs=1)
    assert cli.main(["sweep", str(path), *fixed, "--local", "--trials", "3"]) == 0
    out = capsys.readouterr().out
    trials = load_study(runs, "grid-synthetic").trials
    assert len(trials) == 3
    for trial in trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == runs / "synthetic" / "vanilla" / f"grid-synthetic-trial{trial.number}"
        cfg = OmegaConf.load(run_dir / "config.yaml")
        assert cfg.optim.lr == trial.params["optim.lr"]
        assert cfg.trainer.precision == trial.params["trainer.precision"]
        marker = json.loads((run_dir / sweeps.TRIAL_FILE).read_text())
        assert marker["params"] == trial.params
        if trial.params["trainer.precision"] == "bogus":
            assert trial.state == TrialState.FAIL and marker["state"] == "failed"
            assert "Precision 'bogus' is invalid" in trial.user_attrs["error"]
            assert not (run_dir / "metrics.json").exists()
        else:
            assert trial.state == TrialState.COMPLETE and marker["state"] == "complete"
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert trial.value == pytest.approx(metrics["val/srcc_best"])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert complete and failed  # 3 of the 4 points: at least one of each; the sweep went on
    counts = f"completed {len(complete)}, pruned 0, failed {len(failed)} (this call ran 3)"
    assert f"3 of 3 done: {counts}" in out
    best = max(complete, key=lambda t: t.value)
    assert f"best: trial {best.number}, val/srcc_best = {best.value:.4f}" in out
    assert f"run folder: {best.user_attrs['run_dir']}" in out

    # the same study resumes: 4 trials in all is one more run (the grid's last point)
    assert cli.main(["sweep", str(path), *fixed, "--local", "--trials", "4"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 done: completed 2, pruned 0, failed 2 (this call ran 1)" in out
    assert len(load_study(runs, "grid-synthetic").trials) == 4
    assert len(list((runs / "synthetic" / "vanilla").iterdir())) == 4


def test_a_pruned_trial_stops_and_leaves_a_consistent_run_folder(synthetic_cache, tmp_path) -> None:
    import wandb

    runs = tmp_path / "runs"
    path = write_sweep(
        tmp_path / "prune.yaml",
        {"optim.lr": {"values": [0.001]}},
        early_terminate={"type": "hyperband", "min_iter": 1},
    )
    fixed = tiny(synthetic_cache, runs, epochs=2, **{"logger.mode": "offline"})
    # every SRCC is below 2: the trial is reported worse than the pruner accepts after epoch 1
    pruner = optuna.pruners.ThresholdPruner(lower=2.0)
    summary = sweeps.run_local_sweep(path, 1, fixed, pruner=pruner)
    assert "1 of 1 done: completed 0, pruned 1, failed 0" in summary
    assert "best: none" in summary
    (trial,) = load_study(runs, "prune-synthetic").trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_after_epoch"] == 1
    assert list(trial.intermediate_values) == [1]
    run_dir = Path(trial.user_attrs["run_dir"])
    marker = json.loads((run_dir / sweeps.TRIAL_FILE).read_text())
    assert marker["state"] == "pruned" and marker["pruned_after_epoch"] == 1
    assert (run_dir / "config.yaml").is_file()
    assert not (run_dir / "metrics.json").exists()  # not a finished run
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0  # the pruned epoch was saved, the second one never ran
    assert wandb.run is None  # the trial's W&B run was closed, the next trial gets its own
    (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    assert read_run(record)["summary"]["sweep/state"] == "pruned"
