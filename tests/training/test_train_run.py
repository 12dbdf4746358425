"""A whole `train` run on the tiny built-in data set: run folder, metrics, checkpoints, reload."""

import csv
import json

import pytest
import torch
from scipy import stats
from tiny_runs import tiny_run_overrides

from elta_lightning.checkpoints import load_checkpoint
from elta_lightning.config import load_config
from elta_lightning.run import evaluate_checkpoint, train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_cache):
    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(tiny_run_overrides(synthetic_cache, runs))
    return cfg, train(cfg)


def test_run_folder_has_config_checkpoints_metrics_and_predictions(finished_run) -> None:
    cfg, result = finished_run
    run_dir = result.run_dir
    assert run_dir.parent.parent.name == "synthetic" and run_dir.parent.name == "vanilla"
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("srcc", "plcc", "acc", "mae", "mae_low", "mae_mid", "mae_high", "emd1", "emd2"):
        assert f"test/{key}" in metrics
    assert "val/srcc_best" in metrics
    assert metrics == result.metrics


def test_predictions_cover_the_test_set_once_and_match_the_metrics(finished_run) -> None:
    cfg, result = finished_run
    with (result.run_dir / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == cfg.data.synthetic.num_test
    assert len({r["image_id"] for r in rows}) == len(rows)
    true = [float(r["true_score"]) for r in rows]
    pred = [float(r["predicted_score"]) for r in rows]
    srcc = stats.spearmanr(true, pred).statistic
    assert result.metrics["test/srcc"] == pytest.approx(srcc, abs=1e-5)


def test_best_checkpoint_reloads_and_reproduces_the_test_metrics(finished_run) -> None:
    cfg, result = finished_run
    checkpoint = result.run_dir / "checkpoints" / "best.ckpt"
    module = load_checkpoint(checkpoint)
    assert module.head_kind == "distribution"
    again = evaluate_checkpoint(checkpoint)
    for key, value in again.items():
        assert value == pytest.approx(result.metrics[key], abs=1e-5), key


def test_training_actually_learns(tmp_path, synthetic_cache) -> None:
    """A few epochs on the built-in data must rank the test images better than chance."""
    overrides = tiny_run_overrides(synthetic_cache, tmp_path)
    overrides += [
        "data.synthetic.num_train=256",
        "trainer.max_epochs=4",
        "optim.lr=0.003",
        "data.synthetic.num_test=80",
        "data.synthetic.num_val=40",
    ]
    result = train(load_config(overrides))
    assert result.metrics["test/srcc"] > 0.4


def test_score_head_run_for_scalar_targets(tmp_path, synthetic_cache) -> None:
    overrides = tiny_run_overrides(synthetic_cache, tmp_path) + [
        "model.head=score",
        "trainer.max_epochs=1",
    ]
    result = train(load_config(overrides))
    assert "test/emd1" not in result.metrics
    checkpoint = result.run_dir / "checkpoints" / "best.ckpt"
    module = load_checkpoint(checkpoint)
    scores, probs = module.predict_scores(torch.zeros(2, 3, 32, 32))
    assert probs is None and ((scores >= 1) & (scores <= 10)).all()
    # a score head evaluates on data with vote distributions too (it uses the mean scores)
    again = evaluate_checkpoint(checkpoint)
    assert again["test/srcc"] == pytest.approx(result.metrics["test/srcc"], abs=1e-5)


def test_a_part_on_vanilla_trains_into_its_own_run_folder(tmp_path, synthetic_cache):
    overrides = tiny_run_overrides(synthetic_cache, tmp_path) + [
        "parts=tfa",
        "trainer.max_epochs=1",
    ]
    result = train(load_config(overrides))
    assert result.run_dir.parent.name == "vanilla+tfa"
    assert "test/srcc" in result.metrics
