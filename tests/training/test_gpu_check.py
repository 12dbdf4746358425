"""`benchmarks/gpu_check.py`, the one-command GPU check: its CPU smoke mode runs the same code
(a 2-process DDP `elta train` and the throughput loops) and writes every row; without a GPU and
without `--cpu-smoke` it stops with one clear line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """The script as a user runs it, offline, on one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, str(GPU_CHECK), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_cpu_smoke_writes_the_ddp_check_and_every_throughput_row(tmp_path, synthetic_cache) -> None:
    out = tmp_path / "report" / "gpu_check.md"
    runs = tmp_path / "runs"
    args = ["--cpu-smoke", f"--out={out}", f"--runs-dir={runs}", f"--cache-dir={synthetic_cache}"]
    result = gpu_check(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    markdown = out.read_text()

    ddp = report["ddp"]
    assert ddp["ok"] and ddp["exit_status"] == 0 and ddp["processes"] == 2
    assert len(ddp["run_folders"]) == 1 and ddp["metrics_file"]
    metrics = json.loads((runs / ddp["run_folders"][0] / "metrics.json").read_text())
    assert ddp["test_srcc"] == pytest.approx(metrics["test/srcc"])
    assert ddp["wall_s"] > 0 and ddp["images_per_s"] > 0
    assert (ddp["global_batch"], ddp["batch_per_process"]) == (8, 4)
    assert "| finished | yes (exit status 0) |" in markdown
    assert f"| run folders | 1: `{ddp['run_folders'][0]}` |" in markdown

    rows = {(row["method"], row["precision"]): row for row in report["throughput"]}
    assert set(rows) == {(m, p) for m in ("vanilla", "elta") for p in ("32-true", "bf16-mixed")}
    for (method, precision), row in rows.items():
        assert row["error"] is None
        for key in ("images_per_s", "ms_per_step", "compute_ms", "peak_memory_mb"):
            assert row[key] > 0, (method, precision, key)
        assert 0 < row["wait_share"] < 1
        assert row["ms_per_step"] == pytest.approx(row["wait_ms"] + row["compute_ms"])
        assert f"| {method} | {precision} | {row['images_per_s']:,.1f} |" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a visible GPU")
def test_without_a_gpu_it_stops_with_one_clear_line(tmp_path) -> None:
    out = tmp_path / "gpu_check.md"
    result = gpu_check(f"--out={out}", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no CUDA GPU visible" in result.stderr and "--cpu-smoke" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()
