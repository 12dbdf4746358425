"""Resume and preemption, end to end with real `elta train` processes: a run killed with
SIGKILL in the middle of an epoch, or stopped by SIGTERM / SIGUSR1, resumes from its last
checkpoint in the same folder and ends with exactly the metrics of an uninterrupted run of the
same seed; resuming a finished run does nothing; a changed config is refused.

Tolerance: exact equality of every test metric and of val/srcc_best. On one CPU process with
``trainer.deterministic=true``, one torch thread and no loader workers, the resumed process
repeats every floating-point operation of the uninterrupted one in the same order: the model,
optimiser and part states are restored bit for bit, the training order continues where it
stopped (no batch of the epoch seen twice or skipped), and every random draw (crops, flips,
TFA's mixing) comes from restored generator states. Any tolerance would hide a batch trained
twice or a random stream restarted (each of those changes test SRCC by 0.01 to 0.4 here).
Only ``train/epoch_time_s`` and ``train/peak_memory_mb`` (wall clock and memory) differ.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from subprocess_env import clean_env
from tiny_runs import tiny_run_overrides

from elta_lightning.cli import main
from elta_lightning.config import load_config
from elta_lightning.runs import plan_run

REPO_ROOT = Path(__file__).resolve().parents[2]
ELTA = str(Path(sys.executable).with_name("elta"))

#: ELTA (TFA draws from its own generator, FLSA) on the tiny data: 96 training images in 12
#: batches of 8 per epoch, two epochs, a step checkpoint every 3 steps (steps 3, 6, 9 of each
#: epoch; step 12 is the epoch's end, checkpointed after validation).
RUN = [
    "method=elta",
    "data.batch_size=8",
    "trainer.deterministic=true",
    "trainer.checkpoint_every_n_steps=3",
]
#: Wall clock and memory: the only metrics a resumed run may differ in.
COST_KEYS = ("train/epoch_time_s", "train/peak_memory_mb")


def overrides(cache: Path, runs: Path, *extra: str) -> list[str]:
    return [*tiny_run_overrides(cache, runs), *RUN, *extra]


def elta_train(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [ELTA, "train", *args],
        cwd=REPO_ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc


def start_and_stop(args: list[str], runs: Path, signum: int, env=None) -> tuple[int, str]:
    """Start `elta train`, send ``signum`` as soon as a ``last.ckpt`` exists in a run folder
    under ``runs`` (the method's folder), and wait for the process to end."""
    proc = subprocess.Popen(
        [ELTA, "train", *args],
        cwd=REPO_ROOT,
        env=env or clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a hang is ended with its DDP ranks
    )
    try:
        assert not any(runs.glob("*/checkpoints/last.ckpt"))
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            if any(runs.glob("*/checkpoints/last.ckpt")):
                break
            time.sleep(0.002)
        assert proc.poll() is None, f"it ended before its first checkpoint:\n{proc.stdout.read()}"
        os.kill(proc.pid, signum)
        output, _ = proc.communicate(timeout=120)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # this test's processes only
        proc.wait()
        raise
    return proc.returncode, output


def loop_position(checkpoint: Path) -> tuple[int, int, int]:
    """(epoch, global step, batches of the epoch trained) at which ``checkpoint`` was saved."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    return saved["epoch"], saved["global_step"], progress["processed"]


def results(folder: Path) -> dict[str, float]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in COST_KEYS}


@pytest.fixture(autouse=True)
def no_launcher_env(monkeypatch):
    """Tests that plan runs in this process see no launcher, and leave no variables behind
    (``plan_run`` exports the run id and resumed folder for the processes Lightning launches)."""
    for name in (
        "RANK",
        "LOCAL_RANK",
        "SLURM_PROCID",
        "SLURM_JOB_ID",
        "SLURM_RESTART_COUNT",
        "SLURM_ARRAY_JOB_ID",
        "TORCHELASTIC_RUN_ID",
        "TORCHELASTIC_RESTART_COUNT",
        "ELTA_RESUME_DIR",
        "ELTA_RUN_ID",
    ):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def reference(synthetic_cache, tmp_path_factory) -> dict[str, float]:
    """The metrics of the uninterrupted run (same seed and settings, own process)."""
    runs = tmp_path_factory.mktemp("reference")
    proc = elta_train(*overrides(synthetic_cache, runs, "run_id=whole"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = results(runs / "synthetic" / "elta" / "whole")
    assert {"test/srcc", "test/mae", "val/srcc_best"} <= set(metrics)
    return metrics


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_metrics(
    reference, synthetic_cache, tmp_path, capsys
) -> None:
    args = overrides(synthetic_cache, tmp_path, "run_id=killed")
    folder = tmp_path / "synthetic" / "elta" / "killed"
    code, _ = start_and_stop(args, folder.parent, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert json.loads((folder / "status.json").read_text())["status"] == "running"  # no notice
    epoch, step, trained = loop_position(folder / "checkpoints" / "last.ckpt")
    assert step % 3 == 0 and 0 < trained < 12, (epoch, step, trained)  # a mid-epoch checkpoint
    assert not (folder / "metrics.json").exists()

    resumed = elta_train(f"resume={folder}")  # the run's own config, from its folder
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {folder} from {folder / 'checkpoints' / 'last.ckpt'}" in resumed.stderr
    assert results(folder) == reference
    assert json.loads((folder / "status.json").read_text())["status"] == "finished"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]

    stamp = (folder / "metrics.json").stat().st_mtime_ns
    assert main(["train", f"resume={folder}"]) == 0  # finished: says so, does nothing
    assert "finished already: nothing to resume" in capsys.readouterr().out
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_sigkill_after_an_epoch_end_checkpoint_and_resume_last(
    reference, synthetic_cache, tmp_path
) -> None:
    """Checkpoints at epoch ends only; the kill lands in epoch 2; `resume=last` (what `make
    train RESUME=1` runs) finds the run by data set and method and continues it exactly."""
    args = overrides(synthetic_cache, tmp_path, "trainer.checkpoint_every_n_steps=null")
    code, _ = start_and_stop(args, tmp_path / "synthetic" / "elta", signal.SIGKILL)
    assert code == -signal.SIGKILL
    (folder,) = (tmp_path / "synthetic" / "elta").iterdir()
    assert loop_position(folder / "checkpoints" / "last.ckpt")[:2] == (0, 12)

    resumed = elta_train(*args, "resume=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {folder}" in resumed.stderr
    assert results(folder) == reference  # the step checkpoints of the reference change nothing
    assert [p.name for p in (tmp_path / "synthetic" / "elta").iterdir()] == [folder.name]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_nonzero_and_resumes_exactly(
    reference, synthetic_cache, tmp_path
) -> None:
    args = overrides(synthetic_cache, tmp_path, "run_id=stopped")
    folder = tmp_path / "synthetic" / "elta" / "stopped"
    code, output = start_and_stop(args, folder.parent, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    assert f"elta train resume={folder}" in output
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
    assert status["checkpoint"] == str(folder / "checkpoints" / "last.ckpt")
    epoch, step, trained = loop_position(folder / "checkpoints" / "last.ckpt")
    assert step >= 3 and trained == step - 12 * epoch  # saved at the batch boundary it stopped

    resumed = elta_train(*args, "resume=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert results(folder) == reference


@pytest.mark.slow
def test_sigusr1_under_slurm_requeues_and_the_requeued_job_finds_its_run(
    synthetic_cache, tmp_path, monkeypatch
) -> None:
    """SIGUSR1 (sbatch --signal=USR1@<s>): checkpoint, `scontrol requeue <job>`, exit 138;
    the job started again by SLURM (same job id, SLURM_RESTART_COUNT=1, same command without a
    run id) resumes that run by itself. scontrol is a stand-in that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    args = overrides(synthetic_cache, tmp_path / "runs")
    env = clean_env(SLURM_JOB_ID="4242", PATH=f"{bin_dir}:{os.environ['PATH']}")
    method_runs = tmp_path / "runs" / "synthetic" / "elta"
    code, output = start_and_stop(args, method_runs, signal.SIGUSR1, env)
    assert code == 128 + signal.SIGUSR1, output[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    (folder,) = method_runs.iterdir()
    status = json.loads((folder / "status.json").read_text())
    assert status["signal"] == "SIGUSR1" and status["job"] == "slurm-4242"

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert not plan_run(load_config(args)).resumed  # the first start of a job: a new run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    plan = plan_run(load_config(args))
    assert plan.resumed and plan.run_dir == folder
    assert plan.checkpoint == folder / "checkpoints" / "last.ckpt"
    monkeypatch.setenv("SLURM_JOB_ID", "4243")  # another job's restart: not this run
    assert not plan_run(load_config(args)).resumed


@pytest.mark.slow
def test_two_process_ddp_stopped_by_sigterm_resumes_exactly(synthetic_cache, tmp_path) -> None:
    """`trainer.devices=2` (Lightning launches rank 1; gloo): SIGTERM to rank 0 reaches rank 1,
    both stop at the same batch, the checkpoint holds both processes' random and loader states,
    and the resumed 2-process run ends with the uninterrupted 2-process run's metrics."""
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2"]
    whole = elta_train(*overrides(synthetic_cache, tmp_path / "whole", *ddp, "run_id=whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    args = overrides(synthetic_cache, tmp_path, *ddp, "run_id=stopped")
    folder = tmp_path / "synthetic" / "elta" / "stopped"
    code, output = start_and_stop(args, folder.parent, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, output[-3000:]
    saved = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(saved["callbacks"]["TrainingState"]["per_rank"]) == 2
    assert len(saved["callbacks"]["part:tfa"]["generator"]) == 2
    resumed = elta_train(f"resume={folder}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert results(folder) == results(tmp_path / "whole" / "synthetic" / "elta" / "whole")


# ----- refusals and plans (no training) ------------------------------------------------------
def _unfinished_run(tmp_path: Path, cache: Path, status: dict) -> Path:
    """A run folder as a killed run leaves it before its first checkpoint."""
    cfg_words = overrides(cache, tmp_path, "run_id=half")
    folder = tmp_path / "synthetic" / "elta" / "half"
    folder.mkdir(parents=True)
    from elta_lightning.runs import write_config

    write_config(folder, load_config(cfg_words))
    (folder / "status.json").write_text(json.dumps(status))
    return folder


def test_a_changed_config_is_refused_with_the_differing_keys(
    tmp_path, synthetic_cache, capsys
) -> None:
    folder = _unfinished_run(tmp_path, synthetic_cache, {"status": "failed"})
    assert main(["train", f"resume={folder}", "optim.lr=0.5", "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "differing keys: optim.lr, seed" in err and "--force" in err
    words = overrides(synthetic_cache, tmp_path, "optim.name=sgd")
    assert main(["train", *words, "resume=last"]) == 2  # picks and keys: compared as composed
    assert "differing keys: optim.name" in capsys.readouterr().err


def test_a_run_still_running_on_this_machine_is_not_resumed(
    tmp_path, synthetic_cache, capsys
) -> None:
    import socket

    alive = {"status": "running", "host": socket.gethostname(), "pid": os.getppid()}
    folder = _unfinished_run(tmp_path, synthetic_cache, alive)
    assert main(["train", f"resume={folder}"]) == 1
    assert f"still being trained by process {os.getppid()}" in capsys.readouterr().err


def test_resume_last_without_any_run_says_so(tmp_path, synthetic_cache, capsys) -> None:
    assert main(["train", *overrides(synthetic_cache, tmp_path), "resume=last"]) == 1
    assert "no run of synthetic / elta" in capsys.readouterr().err
    assert main(["train", f"resume={tmp_path / 'nowhere'}"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_force_resumes_with_the_new_values(tmp_path, synthetic_cache) -> None:
    """No checkpoint yet (killed early): the run starts from the beginning in its own folder,
    with the changed value (--force), and the folder's config says so."""
    folder = _unfinished_run(tmp_path, synthetic_cache, {"status": "failed"})
    args = [f"resume={folder}", "trainer.max_epochs=1", "trainer.checkpoint_every_n_steps=null"]
    assert main(["train", *args, "--force"]) == 0
    stored = (folder / "config.yaml").read_text()
    assert "max_epochs: 1\n" in stored and "resume: null" in stored
    assert (folder / "metrics.json").is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["half"]


def test_make_train_resume_passes_resume_last() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    make = ["make", "--no-print-directory", "-n", "train"]  # also when run under `make test`
    shown = subprocess.run(
        [*make, "RESUME=1", "VENV=.venv"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    train_lines = [line for line in shown.stdout.splitlines() if "elta train" in line]
    assert train_lines and train_lines[-1].endswith("resume=last")
    plain = subprocess.run(make, cwd=REPO_ROOT, capture_output=True, text=True)
    assert "elta train" in plain.stdout and "resume=" not in plain.stdout
