"""A run folder says what became of its run (status.json), and a diverging run stops at once with
the step and the last good checkpoint named, instead of training on NaN."""

import json

import pytest

from elta_lightning.callbacks.divergence import DivergenceError
from elta_lightning.cli import main
from elta_lightning.comparison import compare_runs
from elta_lightning.config import load_config
from elta_lightning.run import train

#: An SGD step this large turns the weights into inf / NaN within a few steps.
DIVERGING = [
    "optim.name=sgd",
    "optim.lr=1e30",
    "optim.scheduler=none",
    "trainer.log_every_n_steps=1",
]


def test_finished_run_says_so(tiny_overrides) -> None:
    result = train(load_config([*tiny_overrides, "trainer.max_epochs=1", "run_id=ok"]))
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "finished" and "error" not in status


def test_diverging_run_stops_names_the_step_and_is_marked_failed(tiny_overrides, capsys) -> None:
    overrides = [*tiny_overrides, *DIVERGING, "run_id=nan"]
    cfg = load_config(overrides)
    with pytest.raises(DivergenceError, match=r"NaN or infinite at step \d+.*last good checkpoint"):
        train(cfg)
    run_dir = cfg.runs_dir + "/synthetic/vanilla/nan"
    status = json.loads(open(f"{run_dir}/status.json").read())
    assert status["status"] == "failed" and status["error"].startswith("DivergenceError: ")
    assert main(["train", *overrides[:-1], "run_id=nan-cli"]) == 1  # a clear error, exit 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "Traceback" not in err


def test_compare_skips_a_failed_run_and_says_why(tiny_overrides, tmp_path) -> None:
    ok = train(load_config([*tiny_overrides, "trainer.max_epochs=1", "run_id=ok1"])).run_dir
    failed = load_config([*tiny_overrides, *DIVERGING, "trainer.max_epochs=1", "run_id=bad"])
    with pytest.raises(DivergenceError):
        train(failed)
    bad = ok.parent / "bad"
    report = compare_runs([str(ok), str(bad)], reference="vanilla", out=str(tmp_path / "r"))
    assert report.skipped == [bad]
    assert "failed: DivergenceError" in (tmp_path / "r" / "report.md").read_text()
