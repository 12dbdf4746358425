"""Test-wide settings: one torch thread, no network (hub, W&B), a shared tiny synthetic data set."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_LABELS = REPO_ROOT.parent / "shared" / "data" / "labels"


def tiny_run_overrides(cache_dir: Path, runs_dir: Path) -> list[str]:
    """Overrides that make a whole train + test run take a few seconds on one CPU thread."""
    return [
        f"data.synthetic.cache_dir={cache_dir}",
        f"runs_dir={runs_dir}",
        "data.synthetic.num_train=96",
        "data.synthetic.num_val=30",
        "data.synthetic.num_test=37",
        "data.synthetic.image_size=40",
        "data.transforms.train_resize=36",
        "data.transforms.crop=32",
        "data.transforms.eval_resize=32",
        "data.batch_size=16",
        "data.num_workers=0",
        "model.backbone=test_convnext",
        "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "logger.mode=disabled",
    ]


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the tiny synthetic data set, generated once per test session."""
    return tmp_path_factory.mktemp("synthetic-cache")


@pytest.fixture
def tiny_overrides(synthetic_cache: Path, tmp_path: Path) -> list[str]:
    return tiny_run_overrides(synthetic_cache, tmp_path / "runs")
