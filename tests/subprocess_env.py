"""Subprocesses of the tests: the environment they run in (no outer launcher's variables, one
torch thread, no network) and the 2-process DDP helper scripts, each in a fresh process (DDP
inside the pytest process can collide on ports, and the ``ddp`` launcher would re-run pytest).
A module of its own, as ``tiny_runs``, so tests in every folder import it."""

import os
import subprocess
import sys
from pathlib import Path

#: Variables of an outer launcher that must not leak into the script's own process group.
LAUNCHER_VARS = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK"}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any outer launcher's variables (CI may itself run
    under SLURM or torchrun) or run ids exported by a run in this process, offline, one torch
    thread per process, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARS and not k.startswith(("SLURM_", "TORCHELASTIC_", "PL_", "ELTA_"))
    }
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1", **extra)
    return env


def run_ddp_script(script: Path, out: Path, timeout: int = 180) -> None:
    """Run ``python <script> <out>`` offline on one thread per process; fail with its output."""
    env = clean_env()
    proc = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
