"""Builds and runs one experiment: DataModule, IAAModule, callbacks, W&B logger, Trainer; then
writes the run folder (config, checkpoints, metrics.json, predictions.csv)."""

from __future__ import annotations

import csv
import json
import logging
import netrc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from elta_lightning.config import RunConfig, to_yaml, validate
from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.errors import EltaError
from elta_lightning.metrics import region_cuts
from elta_lightning.models.module import IAAModule, scale_hparams

log = logging.getLogger(__name__)

RUN_ID_ENV = "ELTA_RUN_ID"


@dataclass
class RunResult:
    """Where a run wrote its files and its final metrics."""

    run_dir: Path
    metrics: dict[str, float]


def run_dir_for(cfg: DictConfig) -> Path:
    """``runs/<dataset>/<method>/<run id>``; the id is shared by every DDP process through the
    environment, so processes re-launched by Lightning write to the same folder."""
    run_id = cfg.run_id or os.environ.get(RUN_ID_ENV)
    if not run_id:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{cfg.seed}"
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
        tags=[cfg.method.name, f"seed={cfg.seed}", *cfg.logger.tags],
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


def build_module(cfg: DictConfig, datamodule: IAADataModule) -> IAAModule:
    """The model for ``cfg``; region cuts come from the training labels (20th/80th pct)."""
    cuts = region_cuts(datamodule.train_scores())
    module = IAAModule(
        config=OmegaConf.to_container(cfg, resolve=True),
        scale=scale_hparams(datamodule.scale),
        region_cuts=cuts,
    )
    if cfg.stage == "rrt":
        state = torch.load(cfg.init_from, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
        module.freeze_backbone()
    return module


@rank_zero_only
def write_run_files(
    run_dir: Path, metrics: dict[str, float], module: IAAModule, datamodule: IAADataModule
) -> None:
    """metrics.json and predictions.csv (image id, true and predicted score), from rank 0."""
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    table = module.test_prediction_table
    index, predicted, target = table["index"], table["pred"], table["target"]
    ids = datamodule.tables["test"].image_ids
    with (run_dir / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "true_score", "predicted_score"])
        for i, t, p in zip(index.tolist(), target.tolist(), predicted.tolist()):
            writer.writerow([ids[i], f"{t:.6f}", f"{p:.6f}"])


@rank_zero_only
def write_config(run_dir: Path, cfg: DictConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))


def train(cfg: DictConfig) -> RunResult:
    """Fit on train, select the best epoch by val SRCC, test that checkpoint, write the run."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = run_dir_for(cfg)
    write_config(run_dir, cfg)
    datamodule = build_datamodule(cfg.data)
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


def config_of(module: IAAModule, overrides: list[str]) -> DictConfig:
    """The checkpoint's own config with ``key=value`` overrides (e.g. a new ``data.root``),
    checked against the schema like any run config."""
    schema = OmegaConf.structured(RunConfig)
    stored = OmegaConf.merge(schema, module.cfg)
    if overrides:
        stored = OmegaConf.merge(stored, OmegaConf.from_dotlist(list(overrides)))
    validate(stored)
    return stored


def test_checkpoint(path: str | Path, overrides: list[str] | None = None) -> dict[str, float]:
    """Evaluate a checkpoint on its data set's test split with the metrics of a training run."""
    module = load_checkpoint(path)
    cfg = config_of(module, overrides or [])
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    trainer = build_trainer(cfg, Path(path).parent, None, [])
    trainer.test(module, datamodule=datamodule, verbose=False)
    return dict(module.test_results)


class CheckpointError(EltaError, RuntimeError):
    """A checkpoint that is missing or was not written by this framework."""
