"""Builds and runs one experiment: DataModule, IAAModule with its parts, W&B logger, Trainer;
train (fit, select the best epoch by val SRCC, test it; or continue an unfinished run) and
evaluate a checkpoint. Run folders are :mod:`elta_lightning.runs`, W&B
:mod:`elta_lightning.tracking`, checkpoint files :mod:`elta_lightning.checkpoints`, what an exact
resume and a clean stop on a signal need :mod:`elta_lightning.resume`."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from elta_lightning.callbacks.divergence import DivergenceGuard
from elta_lightning.callbacks.failing_rank import StopLaunchedRanks
from elta_lightning.callbacks.resources import ResourceMeter
from elta_lightning.checkpoints import CheckpointError, load_checkpoint, load_weights
from elta_lightning.config import RunConfig, apply_overrides
from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.distributed import batch_plan, check_launcher_world
from elta_lightning.label_stats import LabelStats
from elta_lightning.models.module import IAAModule, scale_hparams
from elta_lightning.parts import views_needed
from elta_lightning.resume import (
    AtomicCheckpointIO,
    Preemption,
    ResumableOrder,
    TrainingState,
    remove_partial_writes,
)
from elta_lightning.runs import (
    RunResult,
    plan_run,
    read_metrics,
    write_config,
    write_failure,
    write_run_files,
    write_status,
)
from elta_lightning.scales import ScoreScale
from elta_lightning.tracking import build_logger, log_test_results

log = logging.getLogger(__name__)


def build_trainer(
    cfg: DictConfig, run_dir: Path, logger: Any, callbacks: list[pl.Callback]
) -> pl.Trainer:
    """A Trainer whose evaluation is exact under DDP (our loaders shard without padding)."""
    t = cfg.trainer
    distributed = t.devices > 1 or t.num_nodes > 1
    strategy = "ddp" if distributed and t.strategy == "auto" else t.strategy
    return pl.Trainer(
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=resolve_precision(t.precision, t.accelerator),
        sync_batchnorm=t.sync_batchnorm and distributed,
        gradient_clip_val=t.gradient_clip_val,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        enable_progress_bar=t.enable_progress_bar,
        use_distributed_sampler=False,
        logger=logger if logger is not None else False,
        callbacks=[*callbacks, *progress_bar(t.enable_progress_bar, t.log_every_n_steps)],
    )


def progress_bar(enabled: bool, every: int) -> list[pl.Callback]:
    """The progress bar, refreshed every ``every`` steps: each refresh reads the logged loss on
    the host (a device sync), so not every step."""
    return [TQDMProgressBar(refresh_rate=every)] if enabled else []


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed where the run will use a GPU that supports bf16 (Ampere and later),
    32-true otherwise (CPU, older GPUs); anything else as given."""
    if precision != "auto":
        return precision
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


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


def build_module(cfg: DictConfig, datamodule: IAADataModule, restoring: bool = False) -> IAAModule:
    """The model for ``cfg`` with its parts; label statistics come from the training labels.
    ``restoring``: a checkpoint of this run will overwrite the weights (no pretrained weights
    or ``init_from`` are read)."""
    module = IAAModule(
        config=OmegaConf.to_container(cfg, resolve=True),
        scale=scale_hparams(model_scale(datamodule)),
        label_stats=label_stats_of(cfg, datamodule).hparams(),
        load_pretrained=cfg.init_from is None and not restoring,
    )
    if cfg.init_from and not restoring:
        load_weights(module, cfg.init_from)
    if cfg.stage == "rrt":
        module.freeze_backbone()
    return module


def train(
    cfg: DictConfig,
    *,
    run_dir: Path | None = None,
    datamodule: IAADataModule | None = None,
    callbacks: Sequence[pl.Callback] = (),
    force: bool = False,
) -> RunResult:
    """Fit on train, select the best epoch by val SRCC, test that checkpoint, write the run.

    ``run_dir``: write there instead of ``runs/<dataset>/<method>/<run id>``; ``datamodule``: use
    it instead of the one ``cfg.data`` names (e.g. with extra training rows: self-training);
    ``callbacks``: more Lightning callbacks for this run's Trainer (e.g. a local sweep's pruning
    callback, :mod:`elta_lightning.sweeps`).

    ``cfg.resume`` (``last`` or a run folder), or a job its scheduler requeued, continues an
    unfinished run from ``checkpoints/last.ckpt`` in its folder and W&B run, with the same
    results as an uninterrupted run (:mod:`elta_lightning.resume`); a run that is finished
    already is not run again (``already_finished`` in the result); a config that differs from
    the run's is refused unless ``force`` (:func:`~elta_lightning.runs.plan_run`).

    SIGTERM or SIGUSR1 stop the run at the next batch boundary with ``last.ckpt`` written and
    raise :class:`~elta_lightning.resume.RunInterrupted` (a ``SystemExit``, code 128 + signal);
    ``status.json`` then says ``interrupted``, the signal and the checkpoint."""
    check_launcher_world(cfg)
    plan = plan_run(cfg, run_dir, force)
    run_dir = plan.run_dir
    if plan.finished:
        log.warning("%s is finished (metrics.json written): nothing to resume", run_dir)
        return RunResult(run_dir=run_dir, metrics=read_metrics(run_dir), already_finished=True)
    if plan.changed:
        log.warning("resuming %s with changed keys (--force): %s", run_dir, list(plan.changed))
    if plan.resumed:
        where = plan.checkpoint or "the start (no checkpoint yet)"
        log.warning("resuming %s from %s", run_dir, where)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    write_config(run_dir, cfg)
    details = {"resumed_from": plan.checkpoint} if plan.resumed else {}
    if plan.changed:
        details["changed_keys"] = list(plan.changed)
    if plan.resumed:
        _remove_partial_writes(run_dir / "checkpoints")
    write_status(run_dir, "running", **details)
    preemption = Preemption(run_dir / "checkpoints" / "last.ckpt")
    try:
        with preemption.handling():
            metrics = _fit_and_test(
                cfg, run_dir, datamodule, callbacks, plan.checkpoint, preemption
            )
    except SIGTERMException as error:  # a signal: checkpoint saved where there was a step
        interrupted = preemption.interrupted(error)
        interrupted.run_dir = run_dir
        write_status(
            run_dir,
            "interrupted",
            interrupted,
            signal=interrupted.signal_name,
            checkpoint=interrupted.checkpoint,
        )
        raise interrupted from error
    except BaseException as error:  # other interruptions say so too, from whichever rank failed
        write_failure(run_dir, error)
        raise
    write_status(run_dir, "finished")
    return RunResult(run_dir=run_dir, metrics=metrics, resumed_from=plan.checkpoint)


@rank_zero_only
def _remove_partial_writes(folder: Path) -> None:
    for path in remove_partial_writes(folder):
        log.warning("removed %s (a checkpoint write the kill interrupted)", path)


def _fit_and_test(
    cfg: DictConfig,
    run_dir: Path,
    datamodule: IAADataModule | None,
    callbacks: Sequence[pl.Callback],
    resume_from: Path | None = None,
    preemption: Preemption | None = None,
) -> dict[str, float]:
    """The body of :func:`train`: fit (from ``resume_from`` when given), test the best
    checkpoint, log and write the run files."""
    datamodule = datamodule or build_datamodule(cfg.data)
    datamodule.train_views = views_needed(list(cfg.method.parts))
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule, restoring=resume_from is not None)
    order = ResumableOrder(cfg.seed)
    order.install(datamodule)
    checkpoints = run_dir / "checkpoints"
    checkpoint = ModelCheckpoint(
        dirpath=str(checkpoints),
        filename="best",
        monitor="val/srcc",
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # one best.ckpt and one last.ckpt, also after a resume
    )
    state = TrainingState(order, checkpoints / "last.ckpt", cfg.trainer.checkpoint_every_n_steps)
    guard = DivergenceGuard(cfg.trainer.log_every_n_steps, checkpoints)
    logger = build_logger(cfg, run_dir)
    meter = ResourceMeter()
    extra = [preemption] if preemption is not None else []
    trainer = build_trainer(
        cfg,
        run_dir,
        logger,
        [checkpoint, state, *extra, guard, meter, StopLaunchedRanks(), *callbacks],
    )
    if preemption is not None:
        preemption.attach(trainer)
    if trainer.is_global_zero:
        log.info("%s", batch_plan(cfg, trainer.world_size).describe())
    with warnings.catch_warnings():
        # ResumableOrder makes the loader resumable (resume.py); a resumed run's folder has files
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")
        if resume_from is not None:
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
        trainer.fit(
            module,
            datamodule=datamodule,
            ckpt_path=str(resume_from) if resume_from is not None else None,
        )
    if preemption is not None:
        preemption.stop_after_fit(trainer)
    best_val = float(module.val_srcc_best.compute())
    best = checkpoint.best_model_path or "best"
    tested = metrics_of_test_split(trainer, module, datamodule, best)
    metrics = {**tested, "val/srcc_best": best_val, **meter.summary()}
    if logger is not None and trainer.is_global_zero:
        log_test_results(logger, metrics, module, datamodule)
    write_run_files(run_dir, metrics, module, datamodule)
    return metrics


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
    return metrics_of_test_split(build_trainer(cfg, work_dir, None, []), module, datamodule)


def metrics_of_test_split(
    trainer: pl.Trainer,
    module: IAAModule,
    datamodule: IAADataModule,
    checkpoint: str | None = None,
) -> dict[str, float]:
    """``test/*`` metrics of ``module`` (or of ``checkpoint`` loaded into it) on the test split,
    as ``trainer.test`` returns what the module logged: computed over the whole split, the same
    on every process."""
    (logged,) = trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    return {key: float(value) for key, value in logged.items()}
