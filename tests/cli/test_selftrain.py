"""`elta self-train` end to end on the tiny built-in data set: the pseudo-label file and its
provenance, the two-round report, and the documented behaviour for bad input (empty selection,
unreadable images, no distribution head, bad values)."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from elta_lightning.callbacks import PseudoLabelSelection
from elta_lightning.cli import main
from elta_lightning.config import load_config
from elta_lightning.datamodules.labels import LabelTable
from elta_lightning.datamodules.synthetic import dataset_folder
from elta_lightning.run import train
from elta_lightning.scales import AVA_SCALE, PARA_SCALE
from elta_lightning.selftrain import (
    ORACLE_MIN_KEPT,
    SelfTrainError,
    oracle_search,
    read_pseudo_labels,
    write_pseudo_labels,
)

TINY = [
    "method=elta",
    "data.synthetic.num_unlabeled=24",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    # every prediction of a barely trained model is kept (max probability >= 1/10 > 0.05)
    "method.apds.threshold=0.05",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic_cache):
    """Overrides of a tiny self-training run, and a trained round-1 checkpoint (init_from)."""
    from tiny_runs import tiny_run_overrides

    overrides = [*tiny_run_overrides(synthetic_cache, tmp_path_factory.mktemp("runs")), *TINY]
    result = train(load_config([*overrides, "run_id=first"]))
    return overrides, result.run_dir / "checkpoints" / "best.ckpt"


def _run_dir(overrides: list[str], run_id: str):
    return f"{load_config(overrides).runs_dir}/synthetic/elta/{run_id}"


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _dists(rows) -> torch.Tensor:
    return torch.tensor([[float(r[f"p_{k}"]) for k in range(1, 11)] for r in rows])


def test_self_train_two_rounds_pseudo_labels_and_report(tiny, capsys) -> None:
    overrides, _ = tiny
    assert main(["self-train", *overrides, "run_id=full"]) == 0
    out = capsys.readouterr().out
    assert "round 1" in out and "round 2 (+ pseudo-labels)" in out and "MAE low (tail)" in out
    run = _run_dir(overrides, "full")
    rows = _rows(f"{run}/pseudo_labels.csv")
    assert len(rows) == 24 and all(r["image"].startswith("unl") for r in rows)
    dists = _dists(rows)
    assert torch.allclose(dists.sum(dim=1), torch.ones(24), atol=1e-4)
    scores = torch.tensor([float(r["score"]) for r in rows])
    assert torch.allclose(dists @ torch.arange(1.0, 11.0), scores, atol=1e-4)
    # stored label = UNSHARPENED prediction (ELTA 1.0): sharpening only raises the top probability
    confidence = torch.tensor([float(r["confidence"]) for r in rows])
    assert (dists.amax(dim=1) <= confidence + 1e-6).all()
    provenance = json.loads(open(f"{run}/pseudo_labels.json").read())
    assert provenance["source_checkpoint"] == f"{run}/round1/checkpoints/best.ckpt"
    assert provenance["labels_used"] is False and "no ground truth" in provenance["selection"]
    assert (provenance["beta"], provenance["threshold"]) == (1.25, 0.05)
    assert provenance["store"] == "unsharpened"
    counts = provenance["counts"]
    assert (counts["selected"], counts["total"], counts["unreadable_skipped"]) == (24, 24, 0)
    assert sum(r["total"] for r in counts["regions"].values()) == 24
    assert len(provenance["region_cuts"]) == 2
    report = json.loads(open(f"{run}/selftrain.json").read())
    assert report["round2"]["train_rows"] == {"labeled": 96, "pseudo": 24}
    assert report["round1"]["metrics"].keys() == report["round2"]["metrics"].keys()
    assert report["round2"]["run_dir"] == f"{run}/round2"
    assert (report["pseudo_labels"]["selected"], report["pseudo_labels"]["total"]) == (24, 24)


def test_from_checkpoint_with_oracle_and_sharpened_labels_says_labels_were_used(
    tiny, capsys
) -> None:
    overrides, checkpoint = tiny
    extra = [f"init_from={checkpoint}", "method.apds.oracle=true", "method.apds.store=sharpened"]
    assert main(["self-train", *overrides, *extra, "run_id=oracle"]) == 0
    assert "ORACLE" in capsys.readouterr().out
    run = _run_dir(overrides, "oracle")
    provenance = json.loads(open(f"{run}/pseudo_labels.json").read())
    assert provenance["labels_used"] is True and "ORACLE" in provenance["selection"]
    assert provenance["source_checkpoint"] == str(checkpoint)
    assert len(provenance["oracle"]["grid"]) == 4 * 5
    rows = _rows(f"{run}/pseudo_labels.csv")
    confidence = torch.tensor([float(r["confidence"]) for r in rows])
    assert torch.allclose(_dists(rows).amax(dim=1), confidence, atol=1e-5)  # sharpened stored
    report = json.loads(open(f"{run}/selftrain.json").read())
    assert report["round1"]["run_dir"] is None and "test/srcc" in report["round1"]["metrics"]


def test_oracle_search_picks_the_pair_with_the_smallest_error_of_kept_labels() -> None:
    levels = torch.arange(1.0, 11.0)
    n = 40
    logits = torch.full((n, 10), -4.0)
    peaks = torch.arange(n) % 10
    logits[torch.arange(n), peaks] = torch.linspace(0.5, 6.0, n)  # ever more confident
    selection = PseudoLabelSelection.compute(
        torch.arange(n), logits, torch.ones(n, dtype=torch.bool), levels, 1.25, 0.75
    )
    true = selection.unsharpened @ levels + torch.linspace(2.0, 0.0, n)  # confident = accurate
    choice = oracle_search(selection, true, "unsharpened")
    assert choice.beta is not None
    chosen = [
        g for g in choice.grid if (g["beta"], g["threshold"]) == (choice.beta, choice.threshold)
    ]
    assert chosen[0]["kept"] >= ORACLE_MIN_KEPT and chosen[0]["mae"] == choice.mae
    valid = [g["mae"] for g in choice.grid if g["kept"] >= ORACLE_MIN_KEPT]
    assert choice.mae == min(valid)


def test_pseudo_label_file_reads_back_as_the_training_rows(tmp_path) -> None:
    """Round 2 trains on the rows read back from pseudo_labels.csv (on every DDP process): the
    written distributions, renormalised after the file's 6-decimal rounding, and their means."""
    dists = torch.softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(0)), 1)
    dists = dists.double().numpy()
    table = LabelTable(["a.jpg", "sub/b.jpg", "c.png"], dists @ np.arange(1.0, 11.0), dists)
    write_pseudo_labels(tmp_path, table, torch.tensor([0.5, 0.6, 0.7]), AVA_SCALE, {})
    back = read_pseudo_labels(tmp_path / "pseudo_labels.csv", AVA_SCALE)
    assert back.image_ids == table.image_ids
    assert np.allclose(back.distributions.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.allclose(back.distributions, dists, rtol=0, atol=1e-5)
    assert np.allclose(back.scores, back.distributions @ np.arange(1.0, 11.0), rtol=0, atol=1e-12)
    assert back.sources[1].endswith("pseudo_labels.csv, line 3")
    with pytest.raises(SelfTrainError, match="not a pseudo-label file of this scale"):
        read_pseudo_labels(tmp_path / "pseudo_labels.csv", PARA_SCALE)


def test_empty_selection_skips_round_two_with_a_clear_error(tiny, capsys) -> None:
    overrides, checkpoint = tiny
    none_kept = ["method.apds.beta=0", "method.apds.threshold=0.99", f"init_from={checkpoint}"]
    assert main(["self-train", *overrides, *none_kept, "run_id=empty"]) == 1
    assert "no pseudo-label kept: 0 of 24" in capsys.readouterr().err
    run = _run_dir(overrides, "empty")
    assert _rows(f"{run}/pseudo_labels.csv") == []
    report = json.loads(open(f"{run}/selftrain.json").read())
    assert report["round2"] is None and "round 2 skipped" in report["round2_skipped"]


def test_pseudo_labels_that_cannot_be_written_are_one_clear_error(tiny, capsys) -> None:
    """A folder where the file should go (as a full or read-only disk would): the write fails
    on rank 0, which tells every process (under DDP the others would otherwise wait)."""
    from pathlib import Path

    overrides, checkpoint = tiny
    run = Path(_run_dir(overrides, "unwritable"))
    (run / "pseudo_labels.csv").mkdir(parents=True)
    assert main(["self-train", *overrides, f"init_from={checkpoint}", "run_id=unwritable"]) == 1
    err = capsys.readouterr().err
    assert f"could not write the pseudo-label files into {run}" in err
    assert not (run / "round2").exists()


def test_unreadable_unlabeled_image_fails_by_name_or_is_counted(tiny, tmp_path, capsys) -> None:
    overrides, checkpoint = tiny
    source = dataset_folder(load_config(overrides).data.synthetic) / "images"
    folder = tmp_path / "unlabeled"
    (folder / "sub").mkdir(parents=True)
    for k in range(3):
        shutil.copy(source / f"syn{k:06d}.jpg", folder / "sub" / f"good{k}.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    listing = tmp_path / "list.txt"
    listing.write_text(
        "# unlabeled images\nunlabeled/broken.jpg\n\n"
        + "".join(f"unlabeled/sub/good{k}.jpg\n" for k in range(3))
    )
    base = [*overrides, f"init_from={checkpoint}"]
    assert main(["self-train", *base, f"method.apds.unlabeled={folder}", "run_id=bad"]) == 1
    err = capsys.readouterr().err
    assert "1 unreadable image(s)" in err and "broken.jpg" in err and "--skip-unreadable" in err
    args = ["self-train", *base, f"method.apds.unlabeled={listing}", "run_id=skip"]
    assert main([*args, "--skip-unreadable"]) == 0
    run = _run_dir(overrides, "skip")
    counts = json.loads(open(f"{run}/pseudo_labels.json").read())["counts"]
    assert (counts["selected"], counts["total"], counts["unreadable_skipped"]) == (3, 3, 1)
    assert {r["image"] for r in _rows(f"{run}/pseudo_labels.csv")} == {
        f"sub/good{k}.jpg" for k in range(3)
    }
    report = json.loads(open(f"{run}/selftrain.json").read())
    assert report["round2"]["train_rows"]["pseudo"] == 3


def test_self_train_needs_the_distribution_head_and_a_real_source(tiny, tmp_path, capsys) -> None:
    overrides, _ = tiny
    assert main(["self-train", *overrides, "model.head=score", "run_id=score"]) == 1
    assert "distribution head" in capsys.readouterr().err
    missing = f"method.apds.unlabeled={tmp_path / 'nowhere'}"
    assert main(["self-train", *overrides, missing]) == 1
    assert "no such folder or file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, key",
    [
        ("method.tfa.tau1=0", "method.tfa.tau1"),
        ("method.tfa.tau2=-1", "method.tfa.tau2"),
        ("method.flsa.weight=-0.5", "method.flsa.weight"),
        ("method.apds.threshold=1.0", "method.apds.threshold"),
        ("method.apds.threshold=0", "method.apds.threshold"),
        ("data.batch_size=1", "data.batch_size"),
        ("method.apds.store=both", "method.apds.store"),
    ],
)
def test_bad_values_are_configuration_errors(override, key, capsys) -> None:
    for command in ("train", "self-train"):
        assert main([command, "method=elta", override]) == 2
        assert key in capsys.readouterr().err
