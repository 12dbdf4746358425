"""Builds and runs one experiment: DataModule, IAAModule, callbacks, W&B logger, Trainer; then
writes the run folder (config, checkpoints, metrics.json, predictions.csv)."""

from __future__ import annotations

import csv
import json
import logging
import math
import netrc
import os
import secrets
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from elta_lightning.config import RunConfig, apply_overrides, to_yaml
from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.errors import EltaError
from elta_lightning.label_stats import LabelStats
from elta_lightning.models.module import IAAModule, scale_hparams
from elta_lightning.parts import views_needed
from elta_lightning.reports import GROUP_COLUMNS, group_srcc, run_notes
from elta_lightning.scales import ScoreScale

log = logging.getLogger(__name__)

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


def wandb_mode(requested: str) -> str:
    """``auto``: the ``WANDB_MODE`` environment variable when set, else online with an API key
    (``WANDB_API_KEY`` or a netrc entry for api.wandb.ai) and offline without one."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def build_logger(cfg: DictConfig, run_dir: Path) -> WandbLogger | None:
    """W&B through Lightning (rank 0 only): group = data set, tags = method and seed."""
    mode = wandb_mode(cfg.logger.mode)
    if mode == "disabled":
        return None
    logger = WandbLogger(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        name=f"{cfg.data.name}/{cfg.method.name}/{run_dir.name}",
        group=cfg.data.name,
        tags=[cfg.method.name, *cfg.method.parts, f"seed={cfg.seed}", *cfg.logger.tags],
        save_dir=str(run_dir),
        mode=mode,
        job_type=cfg.stage,
    )
    logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return logger


def build_trainer(
    cfg: DictConfig, run_dir: Path, logger: Any, callbacks: list[pl.Callback]
) -> pl.Trainer:
    """A Trainer whose evaluation is exact under DDP (our loaders shard without padding)."""
    t = cfg.trainer
    distributed = t.devices > 1 or t.num_nodes > 1
    strategy = "ddp" if distributed and t.strategy == "auto" else t.strategy
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        use_distributed_sampler=False,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
    )


def model_scale(datamodule: IAADataModule) -> ScoreScale:
    """The data set's scale as the model sees it: without rating levels when the label files
    carry no vote distributions (e.g. PARA's ELTA CSV), so such data gets the score head."""
    if datamodule.has_distribution:
        return datamodule.scale
    return replace(datamodule.scale, levels=None)


def label_stats_of(cfg: DictConfig, datamodule: IAADataModule) -> LabelStats:
    """Statistics of the whole training split's labels (``data.label_stats`` binning): the same
    on every process, because every process reads the full label files."""
    options = cfg.data.label_stats
    return LabelStats.from_scores(
        datamodule.train_scores(),
        datamodule.scale.to_common,
        bin_width=options.bin_width,
        many_share=options.many_share,
        few_share=options.few_share,
    )


def build_module(cfg: DictConfig, datamodule: IAADataModule) -> IAAModule:
    """The model for ``cfg`` with its parts; label statistics come from the training labels."""
    module = IAAModule(
        config=OmegaConf.to_container(cfg, resolve=True),
        scale=scale_hparams(model_scale(datamodule)),
        label_stats=label_stats_of(cfg, datamodule).hparams(),
        load_pretrained=cfg.init_from is None,
    )
    if cfg.init_from:
        load_weights(module, cfg.init_from)
    if cfg.stage == "rrt":
        module.freeze_backbone()
    return module


def load_weights(module: IAAModule, path: str | Path) -> None:
    """Copy the weights of a checkpoint of this framework (any method) into ``module``.

    Backbone and head must fit exactly. Part states (``part_states.<name>``) are taken for the
    parts this run also has; those of parts it lacks are left out (logged), and parts new to
    this run keep their fresh state: a model trained with ``fds`` starts an RRT stage with
    ``lds`` as well as one trained without parts.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"init_from: checkpoint {path} not found")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"init_from: {path} is not a Lightning checkpoint (no state_dict)")
    own = {part.name for part in module.parts}
    state = {k: v for k, v in checkpoint["state_dict"].items() if _part_of(k) in (None, *own)}
    left_out = sorted({_part_of(k) for k in checkpoint["state_dict"]} - own - {None})
    if left_out:
        log.info("init_from: %s: state of parts %s not used by this run", path, left_out)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CheckpointError(
            f"init_from: {path} does not fit this model (model.backbone / model.head / data set "
            f"differ from the checkpoint's?): {str(error).splitlines()[0]}"
        ) from error
    missing = [key for key in missing if _part_of(key) is None]
    if missing or unexpected:
        raise CheckpointError(
            f"init_from: {path} does not fit this model (model.backbone / model.head / data set "
            f"differ from the checkpoint's?): missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}"
        )


def _part_of(key: str) -> str | None:
    """The part a state_dict key belongs to (``part_states.<name>.…``), None for the model."""
    return key.split(".")[1] if key.startswith("part_states.") else None


def json_text(values: dict[str, float]) -> str:
    """Strict JSON of metrics: an undefined value (NaN, e.g. MAE of an empty tail region) is
    written as null."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}
    return json.dumps(clean, indent=2, sort_keys=True, allow_nan=False)


@rank_zero_only
def write_run_files(
    run_dir: Path, metrics: dict[str, float], module: IAAModule, datamodule: IAADataModule
) -> None:
    """From rank 0: metrics.json, predictions.csv (image id, true and predicted score, and the
    image's group where the data has one), group_metrics.json (test SRCC per group, e.g. per
    TAD66K theme) and run_notes.json (split sizes, skipped rows, split warnings, region cuts)."""
    (run_dir / "metrics.json").write_text(json_text(metrics))
    notes = run_notes(datamodule, module.label_stats)
    (run_dir / "run_notes.json").write_text(json.dumps(notes, indent=2))
    table = module.test_prediction_table
    index, predicted, target = (
        table["index"].numpy(),
        table["pred"].numpy(),
        table["target"].numpy(),
    )
    test = datamodule.tables["test"]
    columns = [c for c in GROUP_COLUMNS if c in test.extras]
    with (run_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "true_score", "predicted_score", *columns])
        for i, t, p in zip(index.tolist(), target.tolist(), predicted.tolist()):
            groups = ["" if test.extras[c][i] is None else test.extras[c][i] for c in columns]
            writer.writerow([test.image_ids[i], f"{t:.6f}", f"{p:.6f}", *groups])
    if columns:
        report = {
            c: group_srcc([test.extras[c][i] for i in index], target, predicted) for c in columns
        }
        (run_dir / "group_metrics.json").write_text(json.dumps(report, indent=2))


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
def write_config(run_dir: Path, cfg: DictConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))


def train(
    cfg: DictConfig, *, run_dir: Path | None = None, datamodule: IAADataModule | None = None
) -> RunResult:
    """Fit on train, select the best epoch by val SRCC, test that checkpoint, write the run.

    ``run_dir``: write there instead of ``runs/<dataset>/<method>/<run id>``; ``datamodule``: use
    it instead of the one ``cfg.data`` names (e.g. with extra training rows: self-training)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = run_dir or run_dir_for(cfg)
    write_config(run_dir, cfg)
    datamodule = datamodule or build_datamodule(cfg.data)
    datamodule.train_views = views_needed(list(cfg.method.parts))
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor="val/srcc",
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
    )
    logger = build_logger(cfg, run_dir)
    trainer = build_trainer(cfg, run_dir, logger, [checkpoint])
    trainer.fit(module, datamodule=datamodule)
    best_val = float(module.val_srcc_best.compute())
    trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False)
    metrics = {**module.test_results, "val/srcc_best": best_val}
    if logger is not None and trainer.is_global_zero:
        logger.experiment.summary.update(metrics)
        logger.experiment.finish()
    write_run_files(run_dir, metrics, module, datamodule)
    return RunResult(run_dir=run_dir, metrics=metrics)


def load_checkpoint(path: str | Path) -> IAAModule:
    """A trained model from its checkpoint, without fetching any pretrained weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        return IAAModule.load_from_checkpoint(str(path), map_location="cpu", load_pretrained=False)
    except (KeyError, RuntimeError, TypeError) as error:
        raise CheckpointError(f"{path} is not an elta-lightning checkpoint ({error})") from error


#: Where a checkpoint is evaluated unless the user says otherwise: this machine, one device
#: (the training run's GPU count and nodes need not exist here).
EVALUATION_DEVICES = [
    "trainer.accelerator=auto",
    "trainer.devices=1",
    "trainer.num_nodes=1",
    "trainer.strategy=auto",
]


def config_of(module: IAAModule, overrides: list[str]) -> DictConfig:
    """The checkpoint's own config on one local device, with ``key=value`` overrides (e.g. a
    new ``data.root``, or ``trainer.devices=4``), checked against the schema like any config."""
    schema = OmegaConf.structured(RunConfig)
    stored = OmegaConf.merge(schema, module.cfg)
    return apply_overrides(stored, [*EVALUATION_DEVICES, *overrides])


def evaluate_checkpoint(path: str | Path, overrides: list[str] | None = None) -> dict[str, float]:
    """Evaluate a checkpoint on its data set's test split with the metrics of a training run."""
    module = load_checkpoint(path)
    return evaluate(module, config_of(module, overrides or []), Path(path).parent)


def evaluate(module: IAAModule, cfg: DictConfig, work_dir: Path) -> dict[str, float]:
    """Test-split metrics of a trained ``module`` on the data set ``cfg.data`` names."""
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    if module.head_kind == "distribution" and not datamodule.has_distribution:
        raise CheckpointError(
            f"the model has a distribution head, but the {cfg.data.name} labels given have no "
            "vote distributions to evaluate it on: use the data layout it was trained on"
        )
    build_trainer(cfg, work_dir, None, []).test(module, datamodule=datamodule, verbose=False)
    return dict(module.test_results)


class CheckpointError(EltaError, RuntimeError):
    """A checkpoint that is missing or was not written by this framework."""
