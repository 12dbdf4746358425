"""One 2-process CPU run (gloo) started three ways gives one run folder and the same model:
Lightning's own launcher (``trainer.devices=2``), ``torchrun --nproc_per_node=2 -m
elta_lightning`` and SLURM's ``srun`` (simulated: two processes with the variables srun sets).
A failure on one rank ends every rank within seconds, with the failing rank's error shown and
recorded in the run folder's status.json.

All runs are ``trainer.deterministic=true`` with the same seed and world size, so their metrics
are compared **exactly** (the same floating-point operations in the same order); only the
wall-clock and memory figures differ.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from subprocess_env import clean_env
from tiny_runs import tiny_run_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]
FAILING_RUN = Path(__file__).with_name("ddp_failing_rank_run.py")
ELTA = str(Path(sys.executable).with_name("elta"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
DDP_CPU = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.deterministic=true"]
COST_KEYS = ("train/epoch_time_s", "train/peak_memory_mb")
#: How long the surviving rank may take to end after the other one raised: Lightning's
#: child-process observer polls every 5 s, torchrun's agent faster; gloo notices a closed peer
#: at once.
END_WITHIN_S = 30

pytestmark = pytest.mark.slow


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=env or clean_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{command}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def only_run_folder(runs: Path) -> Path:
    folders = [p for p in (runs / "synthetic" / "vanilla").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def results(folder: Path) -> dict[str, float]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in COST_KEYS}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory, synthetic_cache) -> Path:
    runs = tmp_path_factory.mktemp("lightning")
    run([ELTA, "train", *tiny_run_overrides(synthetic_cache, runs), *DDP_CPU])
    return only_run_folder(runs)


def test_lightning_launch_is_exact_and_splits_the_global_batch(lightning_run) -> None:
    """The test set of odd size (37) is split over two processes without padding: metrics and
    predictions equal a 1-process evaluation of the same checkpoint; the run notes say how the
    global batch of 16 was split."""
    import csv

    from elta_lightning.run import evaluate_checkpoint

    rows = list(csv.DictReader((lightning_run / "predictions.csv").open()))
    assert len(rows) == 37 and len({r["image_id"] for r in rows}) == 37
    single = evaluate_checkpoint(lightning_run / "checkpoints" / "best.ckpt")
    ddp_metrics = json.loads((lightning_run / "metrics.json").read_text())
    for key, value in single.items():
        assert ddp_metrics[key] == pytest.approx(value, abs=1e-5), key
    notes = json.loads((lightning_run / "run_notes.json").read_text())["distributed"]
    assert (notes["world_size"], notes["global_batch"], notes["per_process_batch"]) == (2, 16, 8)
    assert json.loads((lightning_run / "status.json").read_text())["status"] == "finished"


def test_torchrun_gives_one_run_folder_and_the_same_metrics(
    lightning_run, tmp_path, synthetic_cache
) -> None:
    run(
        [
            *TORCHRUN,
            "-m",
            "elta_lightning",
            "train",
            *tiny_run_overrides(synthetic_cache, tmp_path),
            *DDP_CPU,
        ]
    )
    folder = only_run_folder(tmp_path)
    assert folder.name.startswith("job") and folder.name.endswith("-seed42")
    assert results(folder) == results(lightning_run)
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "finished" and status["job"].startswith("torchrun-")


def run_together(commands: list[tuple[list[str], dict[str, str]]]) -> None:
    """Start every ``(command, environment)`` at once (as srun, or torchrun on each node, does)
    and wait for all; fail with their output unless all end with 0."""
    tasks = [
        subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command, env in commands
    ]
    outputs = [task.communicate(timeout=300)[0] for task in tasks]
    codes = [task.returncode for task in tasks]
    assert codes == [0] * len(tasks), "\n".join(o[-3000:] for o in outputs)


def slurm_env(rank: int, nodes: int, job: str, port: int) -> dict[str, str]:
    """What ``srun`` sets for task ``rank`` of a 2-task job on ``nodes`` nodes (the parts
    Lightning's SLURMEnvironment and our run ids read); every "node" is this machine."""
    per_node = 2 // nodes
    return clean_env(
        SLURM_JOB_ID=job,
        SLURM_JOB_NAME="elta-test",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE=str(per_node),
        SLURM_NNODES=str(nodes),
        SLURM_NODEID=str(rank // per_node),
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank % per_node),
        SLURM_NODELIST="127.0.0.1",
        MASTER_PORT=str(port),
    )


@pytest.mark.parametrize("nodes", [1, 2])
def test_slurm_srun_gives_one_run_folder_and_the_same_metrics(
    nodes, lightning_run, tmp_path, synthetic_cache
) -> None:
    """``srun`` with 2 tasks on 1 node (``trainer.devices=2``) or 1 task on each of 2 nodes
    (``trainer.devices=1 trainer.num_nodes=2``): the same 2-process run."""
    placement = [f"trainer.devices={2 // nodes}", f"trainer.num_nodes={nodes}"]
    command = [ELTA, "train", *tiny_run_overrides(synthetic_cache, tmp_path), *DDP_CPU, *placement]
    port = free_port()
    run_together([(command, slurm_env(rank, nodes, "4242", port)) for rank in (0, 1)])
    folder = only_run_folder(tmp_path)
    assert folder.name == "job4242-seed42"
    assert results(folder) == results(lightning_run)
    assert json.loads((folder / "status.json").read_text())["job"] == "slurm-4242"


def test_torchrun_on_two_nodes_gives_one_run_folder_and_the_same_metrics(
    lightning_run, tmp_path, synthetic_cache
) -> None:
    """Two torchrun agents (one per "node", both on this machine) meeting through c10d
    rendezvous, one process each: ``trainer.devices=1 trainer.num_nodes=2``."""
    rendezvous = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}",
        "--rdzv-id=two-nodes",
    ]
    words = [*tiny_run_overrides(synthetic_cache, tmp_path), *DDP_CPU]
    command = [*rendezvous, "-m", "elta_lightning", "train", *words]
    command += ["trainer.devices=1", "trainer.num_nodes=2"]
    run_together([(command, clean_env()), (command, clean_env())])
    folder = only_run_folder(tmp_path)
    assert folder.name == "jobtwo-nodes-seed42"
    assert results(folder) == results(lightning_run)


@pytest.mark.parametrize(
    ("launcher", "failing"), [("lightning", 1), ("torchrun", 1), ("lightning", 0)]
)
def test_a_failure_on_one_rank_ends_every_rank_within_seconds(
    launcher, failing, tmp_path, synthetic_cache
) -> None:
    """One rank raises at a training step; the other is then in (or on its way into) the
    step's gradient all-reduce. The whole job ends within :data:`END_WITHIN_S` of the raise,
    non-zero, with the failing rank's error in the output and in status.json."""
    script = [str(FAILING_RUN), str(tmp_path), str(synthetic_cache), str(failing)]
    command = [sys.executable, *script] if launcher == "lightning" else [*TORCHRUN, *script]
    proc = subprocess.run(
        command, cwd=REPO_ROOT, env=clean_env(), capture_output=True, text=True, timeout=240
    )
    ended = time.time()
    message = f"injected failure on rank {failing} only"
    assert proc.returncode != 0
    raised_at = float((tmp_path / "raised_at").read_text())
    assert ended - raised_at < END_WITHIN_S, f"ended {ended - raised_at:.1f} s after the raise"
    assert message in proc.stdout + proc.stderr
    status = json.loads((tmp_path / "runs/synthetic/vanilla/failing/status.json").read_text())
    assert status["status"] == "failed" and status["rank"] == failing
    assert status["error"] == f"RuntimeError: {message}"


def test_rank_zero_failing_kills_the_processes_lightning_launched() -> None:
    """:class:`StopLaunchedRanks` on a real Trainer set up for a 2-process Lightning launch,
    whose launched process is a real one: killed on rank 0's error, left alone on a stop
    signal (all ranks then save a checkpoint together)."""
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from elta_lightning.callbacks.failing_rank import StopLaunchedRanks

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    launcher = trainer.strategy.launcher
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    launcher.procs = [child]
    try:
        StopLaunchedRanks().on_exception(trainer, None, SIGTERMException())
        assert child.poll() is None
        StopLaunchedRanks().on_exception(trainer, None, RuntimeError("rank 0 failed"))
        assert child.wait(timeout=10) != 0
    finally:
        child.kill()
