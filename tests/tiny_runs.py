"""Settings of a whole train + test run that takes seconds on one CPU thread (imported by tests
in any folder; a module of its own because `conftest` names clash between test folders)."""

from pathlib import Path

#: The vanilla method on tiny images with a tiny timm model, two epochs, nothing logged, no
#: worker processes.
TINY_TRAINING = [
    "method=vanilla",
    "data.transforms.train_resize=36",
    "data.transforms.crop=32",
    "data.transforms.eval_resize=32",
    "data.num_workers=0",
    "model.backbone=test_convnext",
    "model.pretrained=none",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger.mode=disabled",
]


def tiny_run_overrides(cache_dir: Path, runs_dir: Path) -> list[str]:
    """A tiny run on a tiny built-in data set (cached in ``cache_dir``; test split of odd size)."""
    return [
        f"data.synthetic.cache_dir={cache_dir}",
        f"runs_dir={runs_dir}",
        "data.synthetic.num_train=96",
        "data.synthetic.num_val=30",
        "data.synthetic.num_test=37",
        "data.synthetic.image_size=40",
        "data.batch_size=16",
        *TINY_TRAINING,
    ]
