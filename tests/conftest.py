"""Test-wide settings: one torch thread, no network (hub, W&B), a shared tiny synthetic data set."""

import os

# the tests are one process, whatever launched pytest (CI may run inside a SLURM or torchrun
# job): tests that need a launcher's variables set them
LAUNCHER_RANKS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
for _name in list(os.environ):
    if _name.startswith(("SLURM_", "TORCHELASTIC_")) or _name in LAUNCHER_RANKS:
        del os.environ[_name]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_runs import tiny_run_overrides  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_LABELS = REPO_ROOT.parent / "shared" / "data" / "labels"


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the tiny synthetic data set, generated once per test session."""
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture
def tiny_overrides(synthetic_cache: Path, tmp_path: Path) -> list[str]:
    return tiny_run_overrides(synthetic_cache, tmp_path / "runs")
