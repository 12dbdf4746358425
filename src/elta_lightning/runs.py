"""Run folders and what is written into them: run ids every process agrees on, the folder
``runs/<dataset>/<method>/<run id>/``, its config, metrics, predictions and notes, its status,
the one-screen summary, and which folder and checkpoint a run resumes (:func:`plan_run`)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from elta_lightning.config import ConfigError, RunConfig, apply_overrides, load_config, to_yaml
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.distributed import batch_plan, process_group_size, process_rank
from elta_lightning.errors import EltaError
from elta_lightning.metrics import REGION_NAMES, SHOT_NAMES, region_masks
from elta_lightning.models.module import IAAModule
from elta_lightning.reports import GROUP_COLUMNS, group_srcc, run_notes

log = logging.getLogger(__name__)

RUN_ID_ENV = "ELTA_RUN_ID"
#: The folder a resuming rank-0 process continues, for the processes Lightning launches next.
RESUME_ENV = "ELTA_RESUME_DIR"


@dataclass
class RunResult:
    """Where a run wrote its files and its final metrics; ``resumed_from``: the checkpoint it
    continued from; ``already_finished``: it was finished before (nothing was run)."""

    run_dir: Path
    metrics: dict[str, float]
    resumed_from: Path | None = None
    already_finished: bool = False


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


def scheduler_job() -> str | None:
    """The scheduler job of this process, also for a one-process job: SLURM's (``<array
    job>_<task>`` for array jobs) or torchrun's rendezvous id. Recorded in ``status.json``, so
    that a requeued job finds its run again (:func:`plan_run`)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    elastic = os.environ.get("TORCHELASTIC_RUN_ID")
    if elastic and elastic != "none":
        return f"torchrun-{elastic}"
    return None


def restart_count() -> int:
    """How often the scheduler restarted this job: SLURM after a requeue
    (``SLURM_RESTART_COUNT``), torchrun after a failed worker (``TORCHELASTIC_RESTART_COUNT``)."""
    counts = [os.environ.get(v, "0") for v in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")]
    return max(int(c) if c.isdigit() else 0 for c in counts)


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
    run_notes.json (split sizes, skipped rows, split warnings, label statistics, the batch split
    over processes and its learning rate) and, last, so
    that its presence marks a finished run, metrics.json."""
    stats = module.label_stats
    world = datamodule.trainer.world_size if datamodule.trainer is not None else 1
    notes = {**run_notes(datamodule, stats), "distributed": batch_plan(module.cfg, world).as_dict()}
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
def write_status(
    run_dir: Path, status: str, error: BaseException | None = None, **details: Any
) -> None:
    """``status.json``: ``running`` (with the host, process id and scheduler job, so a resume
    can tell a live run and a requeued job can find its run), ``finished``, ``failed`` (with
    the error's type and message) or ``interrupted`` (by a signal; ``details`` name it and the
    checkpoint saved), so a folder says what became of its run; written atomically by rank 0
    (a failure on any rank: :func:`write_failure`)."""
    _write_status_file(run_dir, _status_record(status, error, **details))


def write_failure(run_dir: Path, error: BaseException) -> None:
    """``status.json`` says ``failed`` with the error, from **any** process: the first process
    whose run fails records its error and rank; the others, which then fail in a collective
    or are stopped by the launcher, keep that cause instead of writing their consequence."""
    if read_status(run_dir).get("status") == "failed":
        return
    rank = process_rank()
    details = {"rank": rank} if rank > 0 or process_group_size() > 1 else {}
    _write_status_file(run_dir, _status_record("failed", error, **details))


def _status_record(status: str, error: BaseException | None, **details: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if status == "running":
        record.update(host=socket.gethostname(), pid=os.getpid())
    job = scheduler_job()
    if job:
        record["job"] = job
    if error is not None:
        message = str(error).splitlines()[0] if str(error) else ""
        record["error"] = f"{type(error).__name__}: {message}"
    record.update({k: (str(v) if isinstance(v, Path) else v) for k, v in details.items()})
    return record


def _write_status_file(run_dir: Path, record: dict[str, Any]) -> None:
    """Write atomically (a temporary file per process, then a rename)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    temporary = run_dir / f"status.json.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(record, indent=2))
    os.replace(temporary, run_dir / "status.json")


def read_status(run_dir: Path) -> dict[str, str]:
    """The run's ``status.json`` (``{"status": "unknown"}`` for folders written before it)."""
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text()) if path.is_file() else {"status": "unknown"}


@rank_zero_only
def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """``config.yaml``: the resolved config, without ``resume`` (how a run was started is not
    part of what it is)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stored = cfg.copy()
    if "resume" in stored:
        stored.resume = None
    (run_dir / "config.yaml").write_text(to_yaml(stored))


def read_metrics(run_dir: Path) -> dict[str, float]:
    """A finished run's ``metrics.json`` (undefined values, written as null, read as NaN)."""
    values = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {k: math.nan if v is None else v for k, v in values.items()}


def differing_keys(first: dict, second: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested dicts (present in only one counts)."""
    keys = set()
    for key in set(first) | set(second):
        path = f"{prefix}{key}"
        a, b = first.get(key), second.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys |= differing_keys(a, b, f"{path}.")
        elif a != b:
            keys.add(path)
    return keys


# ----- resuming -----------------------------------------------------------------------------
#: Keys in which a resumed run may differ from its folder's config.yaml.
RESUME_IGNORED_KEYS = ("resume", "run_id")
#: ``key=value`` words that pick YAML files rather than set a key (:func:`load_config`).
PICKS = ("dataset", "method", "parts")


class NothingToResume(EltaError):
    """``resume=last`` found no run of the data set and method to continue."""


@dataclass
class RunPlan:
    """Where a run writes (``run_dir``) and what it continues: ``checkpoint`` (None: from the
    start), ``resumed`` (an existing run folder), ``finished`` (that run is finished: nothing to
    do), ``changed`` (config keys that differ from the folder's, accepted with ``force``)."""

    run_dir: Path
    checkpoint: Path | None = None
    resumed: bool = False
    finished: bool = False
    changed: tuple[str, ...] = ()


def load_train_config(overrides: Sequence[str]) -> DictConfig:
    """The config of ``elta train <overrides>``. With ``resume=<run folder>`` and no
    ``dataset=`` / ``method=`` / ``parts=`` pick, the folder's own config.yaml with the other
    ``key=value`` overrides applied (so ``elta train resume=<folder>`` needs nothing else, and a
    changed key is one the command line changed); otherwise :func:`load_config`."""
    overrides = list(overrides)
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    picked = any(o.split("=", 1)[0] in PICKS for o in overrides)
    if not values or values[-1] in ("last", "", "null") or picked:
        return load_config(overrides)
    stored = _stored_config(Path(values[-1]))
    return apply_overrides(stored, overrides)


def _stored_config(folder: Path) -> DictConfig:
    path = folder / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"resume={folder}: not a run folder (no {path})")
    try:
        return OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"{path} does not fit this version's config schema: {str(error).splitlines()[0]}"
        ) from error


def config_changes(run_dir: Path, cfg: DictConfig) -> list[str]:
    """Keys of ``cfg`` that differ from the config the run folder was trained with (keys added
    to the schema since count with their defaults; :data:`RESUME_IGNORED_KEYS` do not count)."""
    try:
        stored_cfg = _stored_config(Path(run_dir))
    except ConfigError:
        stored_cfg = OmegaConf.load(Path(run_dir) / "config.yaml")
    stored = OmegaConf.to_container(OmegaConf.create(to_yaml(stored_cfg)))
    wanted = OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)))
    for key in RESUME_IGNORED_KEYS:
        stored.pop(key, None)
        wanted.pop(key, None)
    return sorted(differing_keys(stored, wanted))


def is_finished_run(run_dir: Path) -> bool:
    """A run is finished once its ``metrics.json`` is written (the last file, see
    :func:`write_run_files`)."""
    return (Path(run_dir) / "metrics.json").is_file()


def method_folder(cfg: DictConfig) -> Path:
    """``runs/<dataset>/<method>``: where the runs of ``cfg``'s data set and method live."""
    return Path(cfg.runs_dir) / cfg.data.name / cfg.method.name


def run_folders(parent: Path) -> list[Path]:
    """The run folders (with a config.yaml) in ``parent``, most recently active first (by
    their status, config and last checkpoint files)."""
    if not parent.is_dir():
        return []
    folders = [p for p in parent.iterdir() if (p / "config.yaml").is_file()]
    return sorted(folders, key=_last_activity, reverse=True)


def _last_activity(folder: Path) -> float:
    files = [folder / "status.json", folder / "config.yaml", folder / "checkpoints" / "last.ckpt"]
    return max(f.stat().st_mtime for f in files if f.exists())


def plan_run(cfg: DictConfig, run_dir: Path | None = None, force: bool = False) -> RunPlan:
    """Which folder a run of ``cfg`` writes to and which checkpoint it continues from.

    - ``resume=<run folder>``: that folder; ``resume=last``: the newest unfinished run of the
      data set and method under ``runs_dir`` (preferring one whose config is ``cfg``'s).
    - No ``resume``, in a job the scheduler restarted (SLURM requeue: ``SLURM_RESTART_COUNT``;
      torchrun: ``TORCHELASTIC_RESTART_COUNT``): the run of this job (``status.json``'s ``job``)
      with ``cfg``'s config, if any, as if ``resume=`` named it; otherwise a new run.
    - A process launched by a resuming rank 0 (``LOCAL_RANK`` > 0) takes its folder.

    A resumed folder must hold a run whose config is ``cfg``'s (or ``force``: differing keys
    are listed in the plan and ``cfg`` wins); a finished one (``metrics.json``) gives a plan with
    ``finished`` set; one that another live process on this machine is running is refused
    (unless ``force``). Without ``checkpoints/last.ckpt`` (killed before its first checkpoint) it
    starts from the beginning, in the same folder."""
    inherited = os.environ.get(RESUME_ENV)
    if inherited and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return _plan_resume(cfg, Path(inherited), force=True, check=False)
    if cfg.get("resume") is None:
        requeued = _requeued_run(cfg, run_dir)
        if requeued is None:
            os.environ.pop(RESUME_ENV, None)
            return RunPlan(run_dir or run_dir_for(cfg))
        log.warning("job restarted by its scheduler: resuming %s", requeued)
        return _plan_resume(cfg, requeued, force)
    if cfg.resume == "last":
        return _plan_resume(cfg, run_dir or _last_unfinished(cfg), force)
    folder = Path(cfg.resume)
    if run_dir is not None and Path(run_dir).resolve() != folder.resolve():
        raise ConfigError(f"resume={folder} names another folder than this run's ({run_dir})")
    return _plan_resume(cfg, folder, force)


def _last_unfinished(cfg: DictConfig) -> Path:
    parent = method_folder(cfg)
    folders = run_folders(parent)
    unfinished = [f for f in folders if not is_finished_run(f)]
    if not unfinished:
        if folders:
            return folders[0]  # finished: the plan says so
        raise NothingToResume(
            f"resume=last: no run of {cfg.data.name} / {cfg.method.name} in {parent} to resume"
        )
    same = [f for f in unfinished if not config_changes(f, cfg)]
    return (same or unfinished)[0]


def _requeued_run(cfg: DictConfig, run_dir: Path | None) -> Path | None:
    job = scheduler_job()
    if job is None or restart_count() < 1:
        return None
    folders = [Path(run_dir)] if run_dir is not None else run_folders(method_folder(cfg))
    for folder in folders:
        if (folder / "config.yaml").is_file() and read_status(folder).get("job") == job:
            if not config_changes(folder, cfg):
                return folder
    return None


def _plan_resume(cfg: DictConfig, folder: Path, force: bool, check: bool = True) -> RunPlan:
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"resume={folder}: not a run folder (no config.yaml)")
    if is_finished_run(folder):
        return RunPlan(folder, finished=True)
    changed = config_changes(folder, cfg)
    if changed and not force:
        shown = ", ".join(changed[:12]) + (" ..." if len(changed) > 12 else "")
        raise ConfigError(
            f"resume: {folder} was trained with another config; differing keys: {shown}. "
            "Resume with the run's own config (elta train resume=<folder>), or pass --force "
            "to continue it with the new values"
        )
    if check and not force:
        _refuse_if_running(folder)
    last = folder / "checkpoints" / "last.ckpt"
    if not last.is_file():
        log.warning("%s has no checkpoint yet: training it from the start, in that folder", folder)
    os.environ[RUN_ID_ENV] = folder.name
    os.environ[RESUME_ENV] = str(folder)
    return RunPlan(folder, last if last.is_file() else None, resumed=True, changed=tuple(changed))


def _refuse_if_running(folder: Path) -> None:
    """Refuse to resume a run that a live process of this machine is still running."""
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) > 0:
        return  # the job's rank 0 may have marked it running already
    status = read_status(folder)
    pid = status.get("pid")
    if status["status"] != "running" or status.get("host") != socket.gethostname():
        return
    if not isinstance(pid, int) or pid == os.getpid():
        return
    if status.get("job") is not None and status.get("job") == scheduler_job():
        return  # another process of this job (or its earlier incarnation)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise EltaError(
        f"{folder} is still being trained by process {pid} on this machine: stop it first "
        "(or pass --force if that process id now belongs to something else)"
    )
