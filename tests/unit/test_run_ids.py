"""Run ids: fresh per run in one process, shared by every process of one distributed run."""

import pytest

from elta_lightning.config import load_config
from elta_lightning.runs import RUN_ID_ENV, run_dir_for, run_id_for

LAUNCHER_VARS = ("LOCAL_RANK", RUN_ID_ENV, "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_JOB_ID")


@pytest.fixture
def clean_env(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_two_runs_in_one_process_get_two_folders(clean_env) -> None:
    cfg = load_config(["seed=3"])
    first, second = run_dir_for(cfg), run_dir_for(cfg)
    assert first != second and first.parent == second.parent
    assert "-seed3-" in first.name


def test_explicit_run_id_wins(clean_env) -> None:
    assert run_id_for(load_config(["run_id=mine"])) == "mine"


def test_a_rank_launched_by_lightning_takes_its_parents_id(clean_env) -> None:
    parent = run_dir_for(load_config([]))  # rank 0 exports its id
    clean_env.setenv("LOCAL_RANK", "1")  # what Lightning's launcher sets for the child
    assert run_dir_for(load_config([])) == parent


def test_torchrun_and_slurm_jobs_share_the_job_id(clean_env) -> None:
    cfg = load_config(["seed=5"])
    clean_env.setenv("TORCHELASTIC_RUN_ID", "abc")
    assert run_id_for(cfg) == "jobabc-seed5"
    clean_env.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without a rendezvous id
    clean_env.setenv("SLURM_JOB_ID", "777")
    clean_env.setenv("SLURM_NTASKS", "4")
    assert run_id_for(cfg) == "job777-seed5"
    clean_env.setenv("SLURM_NTASKS", "1")  # a one-process SLURM job: a fresh id per run
    assert run_id_for(cfg).startswith("20")
