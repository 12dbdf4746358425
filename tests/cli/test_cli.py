"""The `elta` command end to end, as a user runs it: train, test, predict, bad input."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from subprocess_env import clean_env
from tiny_runs import tiny_run_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]
ELTA = str(Path(sys.executable).with_name("elta"))


def elta(*args: str, cwd: Path = REPO_ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [ELTA, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )


def test_help_and_print_config() -> None:
    assert "key=value" in elta("train", "--help").stdout
    shown = elta("train", "--print-config", "method=vanilla", "optim.lr=0.125")
    assert shown.returncode == 0, shown.stderr
    assert "lr: 0.125" in shown.stdout and "name: vanilla" in shown.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dataset=nope"], "unknown dataset 'nope'"),
        (["method=nope"], "unknown method 'nope'"),
        (["data.batchsize=4"], "batch_size"),
        (["optim.lr=abc"], "optim.lr"),
        (["method.tfa.tau2=0"], "method.tfa.tau2 must be > 0"),
        pytest.param(
            ["trainer.accelerator=gpu", "trainer.devices=2"],
            "gpu",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="asks for a missing GPU"),
        ),
    ],
)
def test_bad_configuration_is_a_clear_error_not_a_traceback(args, expected, tmp_path) -> None:
    here = [f"runs_dir={tmp_path / 'runs'}", f"data.synthetic.cache_dir={tmp_path / 'cache'}"]
    result = elta("train", *args, *here)  # nothing written under the repository
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, synthetic_cache):
    runs = tmp_path_factory.mktemp("cli-runs")
    result = elta("train", *tiny_run_overrides(synthetic_cache, runs), "run_id=cli")
    assert result.returncode == 0, result.stderr[-3000:]
    return runs / "synthetic" / "vanilla" / "cli", result


def test_train_prints_a_summary_and_writes_the_run_folder(cli_run) -> None:
    run_dir, result = cli_run
    assert "test/srcc" in result.stdout and str(run_dir) in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["test/srcc"] > -1


def test_test_command_reproduces_the_run_metrics(cli_run, tmp_path) -> None:
    run_dir, _ = cli_run
    out = tmp_path / "metrics.json"
    result = elta("test", str(run_dir / "checkpoints" / "best.ckpt"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads(out.read_text())
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key, value in again.items():
        assert value == pytest.approx(saved[key], abs=1e-5), key


def test_predict_scores_a_folder_and_reports_unreadable_files(
    cli_run, tmp_path, synthetic_cache
) -> None:
    run_dir, _ = cli_run
    images = tmp_path / "photos"
    (images / "nested").mkdir(parents=True)
    sources = sorted(synthetic_cache.rglob("*.jpg"))[:5]
    for k, source in enumerate(sources):
        shutil.copy(source, images / ("nested" if k % 2 else "") / f"photo{k}.jpg")
    Image.new("RGB", (50, 30), "red").save(images / "flat.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    checkpoint = str(run_dir / "checkpoints" / "best.ckpt")
    out = tmp_path / "scores.csv"

    failed = elta("predict", checkpoint, "--images", str(images), "--out", str(out))
    assert failed.returncode == 1
    assert "broken.jpg" in failed.stderr and "Traceback" not in failed.stderr

    result = elta(
        "predict", checkpoint, "--images", str(images), "--out", str(out), "--skip-unreadable"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scored 6 of 7 images (1 unreadable skipped)" in result.stdout
    rows = list(csv.DictReader(out.open()))
    assert {r["image"] for r in rows} == {
        "flat.png",
        "photo0.jpg",
        "nested/photo1.jpg",
        "photo2.jpg",
        "nested/photo3.jpg",
        "photo4.jpg",
    }
    for row in rows:
        shares = [float(row[f"p_{level}"]) for level in range(1, 11)]
        assert sum(shares) == pytest.approx(1.0, abs=1e-4)
        assert float(row["score"]) == pytest.approx(
            sum(level * p for level, p in zip(range(1, 11), shares)), abs=1e-4
        )


@pytest.fixture(scope="module")
def score_head_checkpoint(tmp_path_factory, synthetic_cache) -> Path:
    """A barely trained model with the score head (one step), in this process."""
    from elta_lightning.config import load_config
    from elta_lightning.run import train

    runs = tmp_path_factory.mktemp("score-runs")
    overrides = [
        *tiny_run_overrides(synthetic_cache, runs),
        "model.head=score",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "run_id=score",
    ]
    return train(load_config(overrides)).run_dir / "checkpoints" / "best.ckpt"


@pytest.mark.parametrize("head", ["distribution", "score"])
def test_predict_gives_the_scores_of_the_models_own_forward(
    head, cli_run, score_head_checkpoint, tmp_path, synthetic_cache
) -> None:
    """`elta predict` (Lightning's predict loop, batches of 2 over 3 images) writes what the
    model itself computes for each image: scores on both scales and, for the distribution head,
    the vote shares."""
    from elta_lightning.checkpoints import load_checkpoint
    from elta_lightning.datamodules.unlabeled import UnlabeledImages
    from elta_lightning.predict import predict_folder

    checkpoint = cli_run[0] / "checkpoints" / "best.ckpt" if head == "distribution" else None
    checkpoint = checkpoint or score_head_checkpoint
    images = tmp_path / "photos"
    images.mkdir()
    for k, source in enumerate(sorted(synthetic_cache.rglob("*.jpg"))[:3]):
        shutil.copy(source, images / f"p{k}.jpg")
    out = tmp_path / "scores.csv"
    report = predict_folder(checkpoint, images, out, batch_size=2)
    assert report.startswith("scored 3 of 3 images (0 unreadable skipped)")
    rows = list(csv.DictReader(out.open()))

    module = load_checkpoint(checkpoint).eval()
    assert module.head_kind == head
    names = [f"p{k}.jpg" for k in range(3)]
    dataset = UnlabeledImages(images, names, module.cfg.data.transforms)
    with torch.no_grad():
        scores, probs = module.predict_scores(torch.stack([dataset[k]["image"] for k in range(3)]))
    assert [r["image"] for r in rows] == names
    for k, row in enumerate(rows):
        assert float(row["score"]) == pytest.approx(float(scores[k]), abs=2e-6)
        common = float(scores[k]) * module.scale.to_common
        assert float(row["score_common"]) == pytest.approx(common, abs=2e-6)
        if head == "distribution":
            shares = [float(row[f"p_{level:g}"]) for level in module.scale.levels]
            assert shares == pytest.approx(probs[k].tolist(), abs=2e-6)
        else:
            assert probs is None and not any(key.startswith("p_") for key in row)


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    result = elta("test", str(tmp_path / "nothing.ckpt"))
    assert result.returncode == 1 and "not found" in result.stderr
