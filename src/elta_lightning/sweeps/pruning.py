"""W&B's hyperband early termination in a local sweep: Optuna's hyperband pruner, fed after
every validation epoch by :class:`PruningCallback`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__package__)


def pruner_for(
    early_terminate: Mapping[str, Any] | None, max_epochs: int
) -> optuna.pruners.BasePruner:
    """W&B's hyperband as Optuna's: ``min_iter`` -> ``min_resource`` (or ``max_iter / eta**s``),
    ``eta`` -> ``reduction_factor`` (W&B's default 3), ``max_iter`` or else the run's
    ``trainer.max_epochs`` -> ``max_resource``; resources are validation epochs. None: no
    pruning."""
    import optuna

    if not early_terminate:
        return optuna.pruners.NopPruner()
    eta = int(early_terminate.get("eta", 3))
    max_iter = early_terminate.get("max_iter")
    if early_terminate.get("min_iter") is not None:
        min_resource = int(early_terminate["min_iter"])
    else:
        min_resource = max(1, int(max_iter // eta ** early_terminate["s"]))
    max_resource = max(int(max_iter) if max_iter else int(max_epochs), min_resource)
    return optuna.pruners.HyperbandPruner(
        min_resource=min_resource, max_resource=max_resource, reduction_factor=eta
    )


class PruningCallback(pl.Callback):
    """Report ``monitor`` to an Optuna trial after each validation epoch (step = epochs done) and,
    when the trial's pruner says so, stop the run with ``optuna.TrialPruned``.

    The run stops as Lightning's early stopping does (``trainer.should_stop``), so ModelCheckpoint
    still saves the epoch it was pruned at; ``TrialPruned`` is raised at ``on_fit_end``, so the
    run is not tested and writes no ``metrics.json`` (the mark of a finished run). One process
    only (local sweeps)."""

    def __init__(self, trial: optuna.trial.Trial, monitor: str = "val/srcc") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_epoch: int | None = None
        self.reason = ""
        self._warned = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.pruned_epoch is not None:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if not self._warned:
                log.warning("sweep: %s is not logged: this trial cannot be pruned", self.monitor)
                self._warned = True
            return
        step = trainer.current_epoch + 1
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            self.pruned_epoch = step
            self.reason = f"pruned after epoch {step}: {self.monitor} = {float(value):.4f}"
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.pruned_epoch is not None:
            import optuna

            raise optuna.TrialPruned(self.reason)
