"""`elta self-train` under 2-process CPU DDP (gloo) gives the single-process pseudo-labels.

The run (``ddp_selftrain_run.py``, a subprocess) trains round 1 on 2 processes, predicts 25
unlabeled images (odd: rank 0 predicts 13, rank 1 12), writes the pseudo-label files and trains
round 2; every rank records what it predicted, loaded, wrote and trained on. Here we check:

- every unlabeled image was predicted exactly once over the two ranks, each shard in set order;
- both ranks loaded the same round-1 checkpoint, the run's ``round1/checkpoints/best.ckpt``;
- rank 0 alone wrote ``pseudo_labels.csv``, ``pseudo_labels.json`` and ``selftrain.json``, once
  each, and no temporary file is left;
- both ranks trained round 2 on the same pseudo-labelled rows, exactly those of the file, and on
  training sets of the same size (labelled + pseudo);
- the file and its provenance equal a single-process selection (this pytest process, one
  device) from the same round-1 checkpoint.

The threshold keeps every image, so every prediction's stored distribution and sharpened
confidence (which depends on the mean score over ALL images, not a rank's shard) is compared.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from subprocess_env import run_ddp_script
from tiny_runs import tiny_run_overrides

SCRIPT = Path(__file__).with_name("ddp_selftrain_run.py")
NUM_UNLABELED = 25
NUM_LABELED = 96  # tiny_run_overrides' training split
WRITTEN = ["pseudo_labels.csv", "pseudo_labels.json", "selftrain.json"]
#: The file rounds values to 6 decimals (±5e-7); the same image predicted in another batch
#: (13 + 12 images per rank vs 25 in one process) may differ by a few float32 ulps (~1e-7 here),
#: which can move a rounded value by one unit of the last decimal.
TOLERANCE = 2e-6


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_same_rows(got: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    assert [r["image"] for r in got] == [r["image"] for r in expected]
    for row, reference in zip(got, expected):
        assert row.keys() == reference.keys()
        for key in row.keys() - {"image"}:
            assert float(row[key]) == pytest.approx(float(reference[key]), abs=TOLERANCE), key


@pytest.mark.slow
def test_two_process_self_train_selects_once_writes_once_and_trains_on_the_same_rows(
    tmp_path, synthetic_cache
) -> None:
    from elta_lightning.checkpoints import load_checkpoint
    from elta_lightning.config import load_config
    from elta_lightning.selftrain import make_pseudo_labels, resolve_unlabeled

    overrides = [
        *tiny_run_overrides(synthetic_cache, tmp_path / "runs"),
        "method=elta",
        f"data.synthetic.num_unlabeled={NUM_UNLABELED}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "method.apds.threshold=0.05",  # keeps every prediction of a barely trained model
        "run_id=ddp",
    ]
    out = tmp_path / "out"
    out.mkdir()
    (out / "overrides.json").write_text(json.dumps(overrides))
    run_ddp_script(SCRIPT, out)
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    run = tmp_path / "runs" / "synthetic" / "elta" / "ddp"
    checkpoint = run / "round1" / "checkpoints" / "best.ckpt"

    # predicted once over all ranks: uneven, disjoint, complete shards, each in set order
    shards = rank0["predicted"], rank1["predicted"]
    assert [len(s) for s in shards] == [13, 12]
    assert [sorted(s) for s in shards] == list(shards)
    assert sorted(shards[0] + shards[1]) == list(range(NUM_UNLABELED))
    assert rank0["checkpoints"] == rank1["checkpoints"] == [str(checkpoint)]

    # written once, by rank 0
    assert (rank0["writes"], rank1["writes"]) == (WRITTEN, [])
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == sorted(WRITTEN)

    # read by every rank: round 2 on both ranks trains on the file's rows
    rows = _rows(run / "pseudo_labels.csv")
    assert len(rows) == NUM_UNLABELED
    assert rank0["pseudo_rows"] == rank1["pseudo_rows"]
    assert [image for image, _ in rank0["pseudo_rows"]] == [r["image"] for r in rows]
    for (_, dist), row in zip(rank0["pseudo_rows"], rows):
        written = [float(row[f"p_{k}"]) for k in range(1, 11)]
        assert dist == pytest.approx(written, abs=1e-5)  # renormalised after 6-decimal rounding
    both_rounds = [NUM_LABELED, NUM_LABELED + NUM_UNLABELED]
    assert rank0["train_rows"] == rank1["train_rows"]
    assert sorted(set(rank0["train_rows"])) == both_rounds
    report = json.loads((run / "selftrain.json").read_text())
    assert report["round2"]["train_rows"] == {"labeled": NUM_LABELED, "pseudo": NUM_UNLABELED}

    # the same selection as one process from the same checkpoint
    cfg = load_config(overrides)  # trainer.devices=1
    single = tmp_path / "single"
    make_pseudo_labels(cfg, load_checkpoint(checkpoint), checkpoint, resolve_unlabeled(cfg), single)
    _assert_same_rows(rows, _rows(single / "pseudo_labels.csv"))
    provenance, reference = (
        json.loads((folder / "pseudo_labels.json").read_text()) for folder in (run, single)
    )
    assert provenance["counts"]["total"] == NUM_UNLABELED
    assert provenance.pop("created") and reference.pop("created")
    assert provenance == reference
