"""One trial of a local sweep: one normal run with the sampled parameters, its outcome
recorded in the run folder."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from elta_lightning.config import load_config
from elta_lightning.errors import ConfigError, EltaError
from elta_lightning.run import train
from elta_lightning.runs import run_dir_for
from elta_lightning.sweeps.files import one_line, sweep_args
from elta_lightning.sweeps.pruning import PruningCallback
from elta_lightning.sweeps.search import suggest

if TYPE_CHECKING:
    import optuna

#: The outcome of a trial, in its run folder.
TRIAL_FILE = "sweep_trial.json"


def check_single_process(cfg: DictConfig) -> None:
    """Local trials run inside this process: DDP would start the whole sweep once per rank."""
    if int(cfg.trainer.devices) > 1 or int(cfg.trainer.num_nodes) > 1:
        raise ConfigError(
            "a local sweep runs each trial in this process, on one device (trainer.devices=1, "
            "trainer.num_nodes=1): for DDP trials use a W&B sweep, or run one local worker per "
            "GPU (CUDA_VISIBLE_DEVICES=<i>) on a shared --storage URL"
        )


class TrialObjective:
    """One Optuna trial = one normal run: ``train(load_config([*fixed, *sampled, run_id]))``,
    its value the sweep's metric in the run's final metrics."""

    def __init__(
        self,
        study_name: str,
        fixed: list[str],
        space: Mapping[str, optuna.distributions.BaseDistribution],
        metric: str,
    ) -> None:
        self.study_name = study_name
        self.fixed = fixed
        self.space = space
        self.metric = metric
        self.ran = 0

    def __call__(self, trial: optuna.trial.Trial) -> float:
        import optuna

        self.ran += 1
        sampled = {key: suggest(trial, key, d) for key, d in self.space.items()}
        words = sweep_args(sampled)
        trial.set_user_attr("overrides", words)
        run_id = f"{self.study_name}-trial{trial.number}"
        callback = PruningCallback(trial, self.metric)
        run_dir: Path | None = None
        record: dict[str, Any] = {"state": "failed"}
        try:
            cfg = load_config([*self.fixed, *words, f"run_id={run_id}"])
            check_single_process(cfg)
            run_dir = run_dir_for(cfg)
            trial.set_user_attr("run_dir", str(run_dir))
            result = train(cfg, run_dir=run_dir, callbacks=[callback])
            value = result.metrics.get(self.metric)
            if value is None or not math.isfinite(float(value)):
                raise EltaError(f"the run's {self.metric} is {value!r}: nothing to optimise")
            record = {"state": "complete", "value": float(value)}
            return float(value)
        except optuna.TrialPruned:
            record = {"state": "pruned", "pruned_after_epoch": callback.pruned_epoch}
            trial.set_user_attr("pruned_after_epoch", callback.pruned_epoch)
            raise
        except (KeyboardInterrupt, SystemExit) as error:  # Lightning exits after Ctrl-C
            record = {"state": "interrupted"}
            raise KeyboardInterrupt(f"trial {trial.number} interrupted") from error
        except Exception as error:
            message = one_line(error)
            record = {"state": "failed", "error": message}
            trial.set_user_attr("error", message)  # Optuna logs the failure and goes on
            raise
        finally:
            close_wandb_run(record["state"])
            if run_dir is not None and run_dir.is_dir():
                record = {
                    "study": self.study_name,
                    "trial": trial.number,
                    **record,
                    "metric": self.metric,
                    "params": sampled,
                }
                (run_dir / TRIAL_FILE).write_text(json.dumps(record, indent=2))


def close_wandb_run(state: str) -> None:
    """Finish a W&B run a trial left open (a finished run closes its own): the next trial must
    not log into it. Pruned runs end as finished with ``sweep/state`` in the summary."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    run.summary["sweep/state"] = state
    run.finish(exit_code=0 if state in ("complete", "pruned") else 1)
