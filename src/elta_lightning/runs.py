"""Run folders and what is written into them: run ids every process agrees on, the folder
``runs/<dataset>/<method>/<run id>/``, its config, metrics, predictions and notes, and the
one-screen summary."""

from __future__ import annotations

import csv
import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from elta_lightning.config import to_yaml
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.metrics import REGION_NAMES, SHOT_NAMES, region_masks
from elta_lightning.models.module import IAAModule
from elta_lightning.reports import GROUP_COLUMNS, group_srcc, run_notes

RUN_ID_ENV = "ELTA_RUN_ID"


@dataclass
class RunResult:
    """Where a run wrote its files and its final metrics."""

    run_dir: Path
    metrics: dict[str, float]


def new_run_id(seed: int) -> str:
    """A fresh run id: time, seed and a random suffix (two runs started in the same second of
    one process, as in a notebook, still get their own folders)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}-{secrets.token_hex(2)}"


def run_id_for(cfg: DictConfig) -> str:
    """The run id every process of one run agrees on.

    ``run_id=`` when given. A process that Lightning launched for a rank > 0 (``LOCAL_RANK`` set
    by its launcher) takes the id its rank-0 parent exported in ``ELTA_RUN_ID``. Processes
    started together by torchrun or SLURM take the job's id. Otherwise a new id, exported so
    that the processes Lightning launches next inherit it.
    """
    if cfg.run_id:
        return cfg.run_id
    if int(os.environ.get("LOCAL_RANK", "0")) > 0 and os.environ.get(RUN_ID_ENV):
        return os.environ[RUN_ID_ENV]
    job = launcher_job_id()
    return f"job{job}-seed{cfg.seed}" if job else new_run_id(cfg.seed)


def launcher_job_id() -> str | None:
    """The id of a multi-process job started by torchrun or SLURM (known to all its processes)."""
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return elastic
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and os.environ.get("SLURM_JOB_ID"):
        return os.environ["SLURM_JOB_ID"]
    return None


def run_dir_for(cfg: DictConfig) -> Path:
    """``runs/<dataset>/<method>/<run id>`` (see :func:`run_id_for`)."""
    run_id = run_id_for(cfg)
    os.environ[RUN_ID_ENV] = run_id
    return Path(cfg.runs_dir) / cfg.data.name / cfg.method.name / run_id


def json_text(values: dict[str, float]) -> str:
    """Strict JSON of metrics: an undefined value (NaN, e.g. MAE of an empty tail region) is
    written as null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}
    return json.dumps(clean, indent=2, sort_keys=True, allow_nan=False)


#: Columns of :func:`prediction_rows` (the first columns of predictions.csv).
PREDICTION_COLUMNS = ("image_id", "true_score", "predicted_score", "bin", "region", "shot")


def prediction_rows(
    module: IAAModule, datamodule: IAADataModule
) -> list[tuple[str, float, float, int, str, str]]:
    """One row per test image (:data:`PREDICTION_COLUMNS`), in the order of
    ``module.test_prediction_table``: image id, true and predicted score (native scale), the true
    score's label bin, its region (low / mid / high by the training cuts) and the bin's shot
    (many / medium / few by training counts). The one place that assigns images to regions, so
    predictions.csv and the W&B tables agree."""
    stats = module.label_stats
    table = module.test_prediction_table
    index, predicted, target = table["index"], table["pred"], table["target"]
    bins = stats.bin_index(target * module.scale.to_common)
    regions = region_masks(target, stats.cuts).float().argmax(dim=0)
    shots = stats.shot_of_bin()[bins]
    image_ids = datamodule.tables["test"].image_ids
    values = [v.tolist() for v in (index, target, predicted, bins, regions, shots)]
    return [
        (image_ids[i], t, p, b, REGION_NAMES[r], SHOT_NAMES[s]) for i, t, p, b, r, s in zip(*values)
    ]


@rank_zero_only
def write_run_files(
    run_dir: Path, metrics: dict[str, float], module: IAAModule, datamodule: IAADataModule
) -> None:
    """From rank 0: predictions.csv (image id, true and predicted score, the true score's label
    bin, region low / mid / high and shot many / medium / few, and the image's group where the
    data has one), group_metrics.json (test SRCC per group, e.g. per TAD66K theme),
    run_notes.json (split sizes, skipped rows, split warnings, label statistics) and, last, so
    that its presence marks a finished run, metrics.json."""
    stats = module.label_stats
    notes = run_notes(datamodule, stats)
    (run_dir / "run_notes.json").write_text(json.dumps(notes, indent=2))
    table = module.test_prediction_table
    index, predicted, target = table["index"], table["pred"], table["target"]
    test = datamodule.tables["test"]
    columns = [c for c in GROUP_COLUMNS if c in test.extras]
    rows = prediction_rows(module, datamodule)
    with (run_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*PREDICTION_COLUMNS, *columns])
        for i, (image_id, t, p, b, region, shot) in zip(index.tolist(), rows):
            groups = ["" if test.extras[c][i] is None else test.extras[c][i] for c in columns]
            writer.writerow([image_id, f"{t:.6f}", f"{p:.6f}", b, region, shot, *groups])
    if columns:
        target_np, predicted_np = target.numpy(), predicted.numpy()
        report = {
            c: group_srcc([test.extras[c][i] for i in index.tolist()], target_np, predicted_np)
            for c in columns
        }
        (run_dir / "group_metrics.json").write_text(json.dumps(report, indent=2))
    (run_dir / "metrics.json").write_text(json_text(metrics))


def format_metrics(title: str, metrics: dict[str, float], where: str) -> str:
    """A one-screen report: a title, one metric a line, and where the files are."""
    width = max((len(k) for k in metrics), default=10)
    lines = [f"== {title} ==", *(f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items()))]
    return "\n".join([*lines, f"  {where}"])


@rank_zero_only
def write_summary(title: str, result: RunResult) -> None:
    """The one-screen report at the end of a run (rank 0 only): metrics and the run folder."""
    print(format_metrics(title, result.metrics, f"run folder: {result.run_dir}"))


@rank_zero_only
def write_status(run_dir: Path, status: str, error: BaseException | None = None) -> None:
    """``status.json``: ``running``, ``finished`` or ``failed`` (with the error's type and
    message), so a folder says what became of its run; written atomically."""
    record: dict[str, str] = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if error is not None:
        message = str(error).splitlines()[0] if str(error) else ""
        record["error"] = f"{type(error).__name__}: {message}"
    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = run_dir / "status.json.tmp"
    temporary.write_text(json.dumps(record, indent=2))
    os.replace(temporary, run_dir / "status.json")


def read_status(run_dir: Path) -> dict[str, str]:
    """The run's ``status.json`` (``{"status": "unknown"}`` for folders written before it)."""
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {"status": "unknown"}


@rank_zero_only
def write_config(run_dir: Path, cfg: DictConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
