"""A tiny 2-process ``elta train`` in which one rank raises at its third training step.

Used by ``test_launchers.py`` as a subprocess, either launched by Lightning

    python tests/distributed/ddp_failing_rank_run.py OUT_DIR CACHE_DIR RANK

(``trainer.devices=2``: Lightning re-runs this script for rank 1) or by torchrun
(``torchrun --nproc_per_node=2 tests/distributed/ddp_failing_rank_run.py OUT_DIR CACHE_DIR
RANK``). The run goes through :func:`elta_lightning.run.train` with one extra callback, which on
rank RANK only writes ``OUT_DIR/raised_at`` (the time) and raises; the other rank goes on into
the step's gradient all-reduce, where it waits for the failed one. The run folder is
``OUT_DIR/runs/synthetic/vanilla/failing``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_runs

import lightning.pytorch as pl  # noqa: E402
from tiny_runs import tiny_run_overrides  # noqa: E402

from elta_lightning.config import load_config  # noqa: E402
from elta_lightning.run import train  # noqa: E402

FAILING_STEP = 2


class FailOnOneRank(pl.Callback):
    """Raise on ``rank`` before training step :data:`FAILING_STEP` (the other rank trains on)."""

    def __init__(self, out: Path, rank: int) -> None:
        self.out = out
        self.rank = rank

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == FAILING_STEP:
            (self.out / "raised_at").write_text(repr(time.time()))
            raise RuntimeError(f"injected failure on rank {self.rank} only")


def main(out: Path, cache: Path, rank: int) -> None:
    overrides = [
        *tiny_run_overrides(cache, out / "runs"),
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=5",
        "run_id=failing",
    ]
    train(load_config(overrides), callbacks=[FailOnOneRank(out, rank)])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
