"""`elta self-train` on 2 CPU processes (DDP, gloo), with every rank recording what it did.

Used by ``test_ddp_selftrain.py`` as a subprocess (its own process: a fresh port and process
group, and Lightning's ``ddp`` launcher starts rank 1 by running THIS script again):

    python tests/distributed/ddp_selftrain_run.py OUT_DIR

runs ``elta self-train <OUT_DIR/overrides.json> trainer.accelerator=cpu trainer.devices=2`` in
this process. Every rank writes ``OUT_DIR/rank<rank>.json`` at the end:

- ``predicted``: the unlabeled rows (set indices) it predicted, in its order;
- ``checkpoints``: the round-1 checkpoints self-training loaded;
- ``writes``: the self-training files it wrote (names, in order);
- ``pseudo_rows``: the pseudo-labelled rows (image, distribution) its round-2 data received;
- ``train_rows``: the size of its training set after each ``setup("fit")`` (the run's and
  Lightning's, round 1 then round 2).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from elta_lightning import selftrain
from elta_lightning.callbacks import PseudoLabelSelector
from elta_lightning.cli import main
from elta_lightning.datamodules.base import IAADataModule

RECORD: dict[str, list[Any]] = {
    "predicted": [],
    "checkpoints": [],
    "writes": [],
    "pseudo_rows": [],
    "train_rows": [],
}


def rank() -> int:
    """This process's rank: Lightning sets ``LOCAL_RANK`` (one node) for rank 1 at its start
    and for rank 0 when it launches rank 1."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def recording(original: Callable, record: Callable[..., None]) -> Callable:
    """``original``, which first passes its arguments to ``record``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record(*args, **kwargs)
        return original(*args, **kwargs)

    return wrapper


def record_predicted(selector, trainer, module, outputs, *args: Any, **kwargs: Any) -> None:
    RECORD["predicted"].extend(outputs["index"].tolist())


def record_pseudo_rows(data, table, image_dir) -> None:
    rows = zip(table.image_ids, table.distributions.tolist())
    RECORD["pseudo_rows"].extend([image, dist] for image, dist in rows)


def record_setup(original: Callable) -> Callable:
    """``IAADataModule.setup`` that records the training set's size after a ``fit`` setup."""

    def setup(data: IAADataModule, stage: str | None = None) -> None:
        original(data, stage)
        if stage == "fit":
            RECORD["train_rows"].append(len(data.datasets["train"]))

    return setup


def instrument() -> None:
    """Wrap the steps the test checks, per rank (see the module doc)."""
    PseudoLabelSelector.on_predict_batch_end = recording(
        PseudoLabelSelector.on_predict_batch_end, record_predicted
    )
    selftrain.load_checkpoint = recording(
        selftrain.load_checkpoint, lambda path: RECORD["checkpoints"].append(str(path))
    )
    selftrain._write_atomically = recording(
        selftrain._write_atomically, lambda path, text: RECORD["writes"].append(path.name)
    )
    IAADataModule.add_training_rows = recording(IAADataModule.add_training_rows, record_pseudo_rows)
    IAADataModule.setup = record_setup(IAADataModule.setup)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    overrides = json.loads((out / "overrides.json").read_text())
    instrument()
    code = main(["self-train", *overrides, "trainer.accelerator=cpu", "trainer.devices=2"])
    (out / f"rank{rank()}.json").write_text(json.dumps(RECORD))
    sys.exit(code)
