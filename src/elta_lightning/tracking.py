"""W&B through Lightning's WandbLogger: online with an API key, offline without one.

What a run records, so that runs of one comparison line up in the W&B UI:

* **group** ``logger.group`` (a comparison sets its own), else the data set's name; **tags** the
  method, its parts, ``seed=<n>`` and ``logger.tags``;
* **config** (:func:`run_config`): top-level keys to group and filter by (``method``,
  ``parts`` as ``"lds+tfa"``, ``dataset``, ``backbone``, ``seed``) and the resolved nested config,
  whose ``method`` section moves to ``method_config`` (the key ``method`` is the method's name);
* **summaries** (:func:`define_summaries`): ``val/srcc`` keeps its maximum, the test metrics and
  ``val/srcc_best`` their final values (:func:`log_test_results` sets them explicitly);
* **tables and plots** of the test split (:func:`log_test_results`): ``test/region_errors``
  (MAE and image count per region low / mid / high, per shot many / medium / few, balanced and
  all), ``test/predictions`` (one row per test image: id, true and predicted score, bin, region,
  shot), histograms ``test/predicted_score_hist`` and ``test/true_score_hist``, and the scatter
  plot ``test/predicted_vs_true``.

The commands that talk to the W&B server itself (``elta sweep``, ``elta dashboard``) find it, its
API key and whether it answers here too (:func:`wandb_server_url`, :func:`wandb_api_key`,
:func:`check_reachable`), and fail with one :class:`WandbServerError` line.
"""

from __future__ import annotations

import math
import netrc
import os
import secrets
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.distributed import batch_plan
from elta_lightning.errors import EltaError
from elta_lightning.metrics import REGION_NAMES, SHOT_NAMES
from elta_lightning.models.module import IAAModule
from elta_lightning.runs import PREDICTION_COLUMNS, prediction_rows

#: The x-axis Lightning's WandbLogger gives every metric.
STEP_METRIC = "trainer/global_step"

#: Columns of the ``test/region_errors`` table.
REGION_ERROR_COLUMNS = ("kind", "region", "mae", "count")


#: The server whose netrc entry holds the API key, unless ``WANDB_BASE_URL`` names another.
DEFAULT_WANDB_URL = "https://api.wandb.ai"

#: Seconds a TCP connection to the W&B server may take before it counts as unreachable.
CONNECT_TIMEOUT_S = 10.0


class WandbServerError(EltaError):
    """The W&B server cannot be used from here (``WANDB_MODE``, no API key, no network): one
    line that ends in what to do instead."""


def wandb_api_key() -> str | None:
    """The W&B API key: ``WANDB_API_KEY``, else the netrc entry (``NETRC`` or ``~/.netrc``, where
    ``wandb login`` writes it) of the server W&B will talk to (:func:`wandb_server_url`), or,
    when no server is named in ``WANDB_BASE_URL``, of :data:`DEFAULT_WANDB_URL` (what older
    ``wandb login`` versions wrote)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    urls = [wandb_server_url()]
    if not os.environ.get("WANDB_BASE_URL"):
        urls.append(DEFAULT_WANDB_URL)
    try:
        entries = netrc.netrc(os.environ.get("NETRC"))
    except (OSError, netrc.NetrcParseError):
        return None
    for url in urls:
        entry = entries.authenticators(urlparse(url).hostname or "")
        if entry:
            return entry[2]
    return None


def wandb_mode(requested: str) -> str:
    """``auto``: the ``WANDB_MODE`` environment variable when set, else online with an API key
    (:func:`wandb_api_key`) and offline without one."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key() else "offline"


def wandb_server_url() -> str:
    """The W&B server W&B's client talks to: ``WANDB_BASE_URL``, else W&B's settings (its
    default server, or the one ``wandb login --host`` saved). Read as ``wandb.Api`` reads them,
    without starting W&B's service process; :data:`DEFAULT_WANDB_URL` should W&B ever move
    that (non-public) settings object."""
    if os.environ.get("WANDB_BASE_URL"):
        return os.environ["WANDB_BASE_URL"]
    try:
        from wandb.sdk import wandb_setup  # here: loading W&B's settings costs ~0.5 s

        return str(wandb_setup.singleton().settings.base_url)
    except (ImportError, AttributeError):
        return DEFAULT_WANDB_URL


def check_reachable(url: str, consequence: str) -> None:
    """Open (and close) a TCP connection to the W&B server at ``url``, so that a machine without
    network fails in seconds, not after the minutes W&B's client retries. Raises
    :class:`WandbServerError` ``cannot reach the W&B server <url> (<why>); <consequence>``."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        address = (parsed.hostname or "", port)
        socket.create_connection(address, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise WandbServerError(
            f"cannot reach the W&B server {url} ({error.strerror or error}); {consequence}"
        ) from error


def parts_label(parts: Sequence[str]) -> str:
    """A method's parts as one value to group by: ``"lds+tfa"``; ``"none"`` without parts."""
    return "+".join(parts) or "none"


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The config W&B records: flat keys to group by, then the resolved nested config.

    ``method`` is the method's name (its config section is logged as ``method_config``), so the
    UI groups by ``method`` directly; ``parts``, ``dataset``, ``backbone`` and ``seed`` sit next
    to it. Every other section keeps its name, so ``optim.lr`` means the same key as in a
    sweep file. ``distributed`` is the split of the global batch over the run's processes
    (:class:`~elta_lightning.distributed.BatchPlan`), so runs on different GPU counts can be
    told apart.
    """
    nested = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(nested, dict)
    method_section = nested.pop("method")
    return {
        "method": cfg.method.name,
        "parts": parts_label(cfg.method.parts),
        "dataset": cfg.data.name,
        "backbone": cfg.model.backbone,
        "seed": cfg.seed,
        **nested,
        "method_config": method_section,
        "distributed": batch_plan(cfg).as_dict(),
    }


def run_tags(cfg: DictConfig) -> list[str]:
    """Tags of a run: the method, its parts, ``seed=<n>`` and the user's ``logger.tags``."""
    tags = [cfg.method.name, *cfg.method.parts, f"seed={cfg.seed}", *cfg.logger.tags]
    return list(dict.fromkeys(tags))  # W&B keeps a tag once; so do we, in order


def run_group(cfg: DictConfig) -> str:
    """The W&B group: ``logger.group`` (a comparison's), else the data set's name."""
    return cfg.logger.group or cfg.data.name


#: File in a run folder holding its W&B run id, so a resumed run logs into the same W&B run.
WANDB_ID_FILE = "wandb_id"


def wandb_run_id(run_dir: Path) -> str | None:
    """The W&B run id of the run in ``run_dir``: the one stored in its folder, else a new one,
    stored there (by rank 0; other processes log nothing, and get None when it is not there)."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip() or None
    if rank_zero_only.rank != 0:
        return None
    run_id = secrets.token_hex(4)  # W&B's own ids are 8 characters of [0-9a-z]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def build_logger(cfg: DictConfig, run_dir: Path) -> WandbLogger | None:
    """W&B through Lightning (rank 0 only): group = ``logger.group`` or the data set, tags =
    method, parts and seed, the config of :func:`run_config`, summaries of
    :func:`define_summaries`. The W&B run id is kept in the run folder (:func:`wandb_run_id`):
    a resumed run continues its W&B run (WandbLogger resumes with ``resume="allow"``).
    ``None`` when W&B is disabled."""
    mode = wandb_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    logger = WandbLogger(
        id=wandb_run_id(run_dir),
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=f"{cfg.data.name}/{cfg.method.name}/{run_dir.name}",
        group=run_group(cfg),
        tags=run_tags(cfg),
        save_dir=str(run_dir),
        mode=mode,
        job_type=cfg.stage,
    )
    logger.log_hyperparams(run_config(cfg))
    define_summaries(logger.experiment)
    return logger


def define_summaries(experiment: Any) -> None:
    """Summary of each key: ``val/srcc`` its maximum (the epoch the checkpoint is chosen by),
    ``val/srcc_best`` its last value (the key sweeps maximise: a plain number), on Lightning's
    step axis. Test metrics keep W&B's default (the last value), and
    :func:`log_test_results` sets the final ones explicitly. (No ``test/*`` glob: its summary
    would also wrap the ``_type`` of the logged tables, and the UI would no longer find them.)

    A no-op on the stand-in experiment Lightning gives processes of rank > 0."""
    define = getattr(experiment, "define_metric", None)
    if define is None:
        return
    define("val/srcc", step_metric=STEP_METRIC, summary="max")
    define("val/srcc_best", step_metric=STEP_METRIC, summary="last")


def region_error_rows(
    metrics: Mapping[str, float], rows: Sequence[tuple[str, float, float, int, str, str]]
) -> list[list[Any]]:
    """Rows of ``test/region_errors`` (:data:`REGION_ERROR_COLUMNS`): for each region (low /
    mid / high), shot (many / medium / few), ``balanced`` and ``all``, the test MAE as the
    run's metrics give it (native scale; ``None`` where the region is empty or the metric
    absent) and the number of test images in it (from :func:`~elta_lightning.runs.prediction_rows`,
    the same assignment as predictions.csv)."""
    regions = [r[4] for r in rows]
    shots = [r[5] for r in rows]

    def mae(key: str) -> float | None:
        value = metrics.get(key)
        return None if value is None or math.isnan(value) else float(value)

    table = [["region", n, mae(f"test/mae_{n}"), regions.count(n)] for n in REGION_NAMES]
    table += [["shot", n, mae(f"test/mae_{n}"), shots.count(n)] for n in SHOT_NAMES]
    table.append(["shot", "balanced", mae("test/mae_balanced"), len(rows)])
    table.append(["all", "all", mae("test/mae"), len(rows)])
    return table


def log_test_results(
    logger: WandbLogger,
    metrics: Mapping[str, float],
    module: IAAModule,
    datamodule: IAADataModule,
) -> None:
    """After the test (rank 0): log the test split's tables, histograms and scatter plot, set
    the final ``metrics`` (test metrics, ``val/srcc_best``, time and memory) in the summary,
    and finish the W&B run."""
    import wandb  # here, not at import time: most commands never log to W&B

    experiment = logger.experiment
    rows = prediction_rows(module, datamodule)
    predictions = wandb.Table(columns=list(PREDICTION_COLUMNS), data=[list(r) for r in rows])
    errors = wandb.Table(columns=list(REGION_ERROR_COLUMNS), data=region_error_rows(metrics, rows))
    true_scores = [r[1] for r in rows]
    predicted_scores = [r[2] for r in rows]
    experiment.log(
        {
            "test/region_errors": errors,
            "test/predictions": predictions,
            "test/predicted_score_hist": wandb.Histogram(predicted_scores),
            "test/true_score_hist": wandb.Histogram(true_scores),
            "test/predicted_vs_true": wandb.plot.scatter(
                predictions, "true_score", "predicted_score", title="Test: predicted vs true"
            ),
        }
    )
    experiment.summary.update(dict(metrics))
    experiment.finish()
