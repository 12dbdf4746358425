"""W&B through Lightning in offline mode: read back what the run file and its media hold."""

import csv
import math

import pytest
from omegaconf import OmegaConf
from tiny_runs import tiny_run_overrides
from wandb_records import read_run, read_table

from elta_lightning.config import load_config
from elta_lightning.metrics import REGION_NAMES, SHOT_NAMES
from elta_lightning.run import train
from elta_lightning.tracking import (
    REGION_ERROR_COLUMNS,
    parts_label,
    region_error_rows,
    run_config,
    run_group,
    run_tags,
    wandb_api_key,
    wandb_mode,
)


def _same(logged, expected) -> bool:
    """Equal to float32 precision; NaN (an empty tail region) equals NaN."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return logged is None or (isinstance(logged, float) and math.isnan(logged))
    return logged == pytest.approx(expected, abs=1e-6)


def test_offline_run_records_summaries_config_tables_and_histograms(
    tmp_path, synthetic_cache
) -> None:
    overrides = [
        o for o in tiny_run_overrides(synthetic_cache, tmp_path) if not o.startswith("logger.")
    ]
    overrides += [
        "method=lds",
        "logger.mode=offline",
        "logger.group=cmp-test",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "seed=7",
    ]
    cfg = load_config(overrides)
    result = train(cfg)
    files = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    record = read_run(files[0])
    run, config, summary = record["run"], record["config"], record["summary"]

    # group and tags: runs of one comparison share the group; method and seed are tags
    assert run.run_group == "cmp-test"
    assert set(run.tags) >= {"lds", "seed=7"}

    # config: flat keys to group by, and the nested config beside them
    assert {k: config[k] for k in ("method", "parts", "dataset", "backbone", "seed")} == {
        "method": "lds",
        "parts": "lds",
        "dataset": "synthetic",
        "backbone": "test_convnext",
        "seed": 7,
    }
    assert config["method_config"]["name"] == "lds"
    assert config["method_config"]["parts"] == ["lds"]
    assert config["optim"] == OmegaConf.to_container(cfg.optim)
    assert config["data"]["name"] == "synthetic"
    assert config["logger"]["group"] == "cmp-test"

    # history: per-step and per-epoch metrics on Lightning's step axis
    logged = {key for row in record["history"] for key in row}
    assert {"train/loss", "train/loss_epoch", "val/srcc", "val/srcc_best", "test/srcc"} <= logged
    val_srcc = [row["val/srcc"] for row in record["history"] if "val/srcc" in row]
    val_best = [row["val/srcc_best"] for row in record["history"] if "val/srcc_best" in row]
    assert len(val_srcc) == 2 and val_best == sorted(val_best)  # a best-so-far never decreases

    # summary: val/srcc keeps its maximum (define_metric), final val/srcc_best and test metrics
    assert summary["val/srcc"] == {"max": pytest.approx(max(val_srcc), abs=1e-6)}
    assert summary["val/srcc_best"] == pytest.approx(result.metrics["val/srcc_best"], abs=1e-6)
    assert summary["val/srcc_best"] == pytest.approx(max(val_srcc), abs=1e-6)
    test_keys = [k for k in result.metrics if k.startswith("test/")]
    assert {"test/srcc", "test/plcc", "test/mae_few", "test/mae_balanced"} <= set(test_keys)
    for key in [*test_keys, "train/epoch_time_s", "train/peak_memory_mb"]:
        assert _same(summary[key], result.metrics[key]), key

    # the predictions table: one row per test image, the same rows as predictions.csv
    with (result.run_dir / "predictions.csv").open() as handle:
        csv_rows = list(csv.DictReader(handle))
    assert len(csv_rows) == 37
    predictions = read_table(files[0], summary["test/predictions"])
    assert predictions["columns"] == [
        "image_id",
        "true_score",
        "predicted_score",
        "bin",
        "region",
        "shot",
    ]
    assert len(predictions["data"]) == 37
    for row, expected in zip(predictions["data"], csv_rows):
        assert row[0] == expected["image_id"]
        assert row[1] == pytest.approx(float(expected["true_score"]), abs=1e-5)
        assert row[2] == pytest.approx(float(expected["predicted_score"]), abs=1e-5)
        assert [row[3], row[4], row[5]] == [
            int(expected["bin"]),
            expected["region"],
            expected["shot"],
        ]

    # the per-region error table: MAE as the metrics say, counts as predictions.csv says
    errors = read_table(files[0], summary["test/region_errors"])
    assert errors["columns"] == list(REGION_ERROR_COLUMNS)
    by_name = {row[1]: row for row in errors["data"]}
    assert list(by_name) == [*REGION_NAMES, *SHOT_NAMES, "balanced", "all"]
    for name in REGION_NAMES:
        assert by_name[name][3] == sum(r["region"] == name for r in csv_rows)
    for name in SHOT_NAMES:
        assert by_name[name][3] == sum(r["shot"] == name for r in csv_rows)
    for name in [*REGION_NAMES, *SHOT_NAMES, "balanced"]:
        assert _same(by_name[name][2], result.metrics[f"test/mae_{name}"]), name
    assert by_name["all"][2:] == [pytest.approx(result.metrics["test/mae"], abs=1e-6), 37]

    # histograms of predicted and true scores, and the predicted-vs-true scatter plot
    for key in ("test/predicted_score_hist", "test/true_score_hist"):
        assert summary[key]["_type"] == "histogram"
        assert sum(summary[key]["values"]) == 37
    assert "test/predicted_vs_true" in config["_wandb"]["visualize"]


def test_logged_config_tags_and_group_of_a_config(synthetic_cache, tmp_path) -> None:
    cfg = load_config(
        [
            *tiny_run_overrides(synthetic_cache, tmp_path),
            "parts=lds,tfa",
            "seed=3",
            "logger.tags=[x]",
        ]
    )
    values = run_config(cfg)
    assert values["method"] == "vanilla+lds+tfa"
    assert values["parts"] == "lds+tfa"
    assert (values["dataset"], values["backbone"], values["seed"]) == (
        "synthetic",
        "test_convnext",
        3,
    )
    assert values["method_config"]["parts"] == ["lds", "tfa"]
    assert values["optim"] == dict(cfg.optim)
    split = values["distributed"]
    assert (split["world_size"], split["global_batch"], split["per_process_batch"]) == (1, 16, 16)
    assert run_tags(cfg) == ["vanilla+lds+tfa", "lds", "tfa", "seed=3", "x"]
    assert run_group(cfg) == "synthetic"  # without logger.group: the data set
    cfg.logger.group = "cmp-abc"
    assert run_group(cfg) == "cmp-abc"
    assert parts_label([]) == "none"


def test_region_error_rows_count_images_and_take_mae_from_the_metrics() -> None:
    rows = [
        ("a.jpg", 2.0, 3.0, 20, "low", "few"),
        ("b.jpg", 5.0, 5.5, 50, "mid", "many"),
        ("c.jpg", 5.1, 5.0, 51, "mid", "many"),
    ]
    metrics = {"test/mae_low": 1.0, "test/mae_mid": 0.3, "test/mae_high": float("nan")}
    metrics |= {"test/mae_many": 0.3, "test/mae_few": 1.0, "test/mae": 0.5333}
    table = {row[1]: row for row in region_error_rows(metrics, rows)}
    assert table["low"] == ["region", "low", 1.0, 1]
    assert table["mid"] == ["region", "mid", 0.3, 2]
    assert table["high"] == ["region", "high", None, 0]  # an empty region: no MAE
    assert table["many"] == ["shot", "many", 0.3, 2]
    assert table["medium"] == ["shot", "medium", None, 0]
    assert table["balanced"] == ["shot", "balanced", None, 3]  # metric absent: no MAE
    assert table["all"] == ["all", "all", 0.5333, 3]


def test_mode_auto_is_offline_without_an_api_key(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("auto") == "disabled"
    assert wandb_mode("offline") == "offline"


def test_mode_auto_is_online_with_a_netrc_key_for_the_server(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine wandb.example login user password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_file))
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert wandb_api_key() is None  # the key of another server
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example:8443")
    assert wandb_api_key() == "k" * 40
    assert wandb_mode("auto") == "online"


def test_mode_auto_finds_the_key_wandb_login_saved_for_its_server(tmp_path) -> None:
    """`wandb login --host https://wandb.example2` saves the server in W&B's settings and the
    key in netrc under that host: `logger.mode=auto` goes online with it (a fresh process, as
    W&B reads its settings once per process)."""
    import os
    import subprocess
    import sys

    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / "settings").write_text("[default]\nbase_url = https://wandb.example2\n")
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine wandb.example2 login user password " + "k" * 40 + "\n")
    netrc_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path / "wandb"))
    code = "from elta_lightning.tracking import wandb_mode; print(wandb_mode('auto'))"

    def mode(**extra: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert mode(NETRC=str(netrc_file)) == "online"
    assert mode(NETRC=str(tmp_path / "no-netrc")) == "offline"
