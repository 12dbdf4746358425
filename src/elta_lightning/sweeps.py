"""Hyper-parameter sweeps: one sweep file, run by W&B agents or locally by Optuna.

Sweep files
-----------
``experiments/sweeps/<method>.yaml`` are W&B sweep configs. Their parameters are dotted config
keys (``optim.lr``, ``method.tfa.tau1``) and reach the program on its command line::

    command: [${env}, elta, train, method=elta, ${args_no_hyphens}]

The W&B agent replaces ``${args_no_hyphens}`` by one ``key=value`` word per sampled parameter
(``optim.lr=0.0001``), so every DDP process parses the same argv into the same config and nothing
reads ``wandb.config`` (Lightning's DDP launcher re-runs the same argv for ranks 1..N-1).

Fixed arguments (``elta sweep FILE dataset=aadb data.root=/data/AADB trainer.devices=4``, what
``make sweep`` passes) are written into the sweep's ``command`` just before ``${args_no_hyphens}``
when the sweep is created, so every run of every agent, on every machine, gets them
(:func:`with_fixed_args`). A fixed key that is also a swept parameter pins it: the parameter
leaves the search space. ``method=`` belongs to the sweep file (each method has its own file).

W&B (``elta sweep FILE ...``, ``make sweep DATASET=... METHOD=... GPUS=... COUNT=...``)
---------------------------------------------------------------------------------------
Creates the sweep on the W&B server (``wandb.sweep``) and starts an agent here
(``wandb.agent(sweep_id, count=...)``): the agent runs the command as a subprocess, so
``trainer.devices=4`` starts a normal 4-process DDP run per trial. More agents elsewhere:
``wandb agent <entity>/<project>/<sweep id>`` (they run the same command, fixed arguments
included). Without an API key, with ``WANDB_MODE=offline|disabled`` or without network it
stops with a one-line :class:`EltaError` naming the ``--local`` alternative.

Local (``elta sweep FILE --local --trials N [--storage URL]``)
--------------------------------------------------------------
The same file with Optuna, no W&B server: ``grid`` -> ``GridSampler``, ``random`` ->
``RandomSampler``, ``bayes`` -> ``TPESampler`` (seeded from ``seed``), ``early_terminate``
(hyperband) -> ``HyperbandPruner`` (``min_iter`` -> ``min_resource``, ``eta`` ->
``reduction_factor``, ``max_iter`` or else ``trainer.max_epochs`` -> ``max_resource``), fed after
every validation epoch with the sweep's metric by :class:`PruningCallback` (step = epochs done,
as W&B counts hyperband iterations by the metric's logged values). That metric is
``val/srcc_best``, the best epoch so far: the value the trial will have if it stops now, and
what W&B's hyperband watches too (pruning on the last epoch's ``val/srcc`` would stop runs that
peaked early and then overfit, common on these data sets). Each trial is a normal run,
``train(load_config([*fixed, *sampled key=value, run_id=<study>-trial<k>]))``, with its normal
run folder ``runs/<dataset>/<method>/<study>-trial<k>/`` (and an offline W&B run when
``logger.mode`` allows), plus ``sweep_trial.json`` (state: complete / pruned / failed /
interrupted, parameters, value or error); the trial's user attributes record the run folder.
A pruned run stops at the end of the epoch that was pruned (its checkpoints include that epoch)
and has no ``metrics.json`` (the mark of a finished run). Local trials run in this process, so
they use one device: DDP would re-launch the whole sweep command per rank.

The study is ``<name or file stem>-<dataset>`` (``elta-synthetic``); its folder
``<runs_dir>/sweeps/<study>/`` holds ``optuna.db`` (the default storage, SQLite),
``sweep.yaml`` (the search, fixed arguments included) and ``summary.json``.

Resume semantics: ``--trials N`` is the study's total. A trial counts once it has an outcome:
completed, pruned, or failed with an error in its own config or training (recorded as FAIL with
the error; the sweep goes on). A call runs the trials missing to N (none when N is reached), so
the same command resumes an interrupted sweep. Trials that were interrupted (Ctrl-C; or killed:
Optuna's heartbeat marks them failed after a grace period) do not count and are queued again
with their parameters. A grid sweep runs at most its number of points, any sweep at most its
``run_cap``. A study made from another search (parameters, method, metric, early_terminate,
command) is refused: delete its folder, or set ``name:`` in the sweep file for a new study.

Many machines, one study (Optuna's distributed mode): give every worker the same RDB URL; each
runs trials of the shared study until the study has N, e.g. one worker per GPU (PostgreSQL needs
its SQLAlchemy driver installed, e.g. ``pip install psycopg2-binary``)::

    # on every machine (and per GPU: CUDA_VISIBLE_DEVICES=<i>), the same command:
    elta sweep experiments/sweeps/lds.yaml dataset=aadb data.root=/data/AADB \\
        --local --trials 40 --storage postgresql://user:password@db.lab.org/optuna

Random and TPE samplers of workers sharing a storage are seeded with ``seed`` + their process id
(workers started at once do not propose the same first points); a grid shares its seed, and its
trial k takes point k. A single worker with the default storage is repeatable.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import netrc
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import lightning.pytorch as pl
import yaml
from omegaconf import DictConfig

from elta_lightning.config import load_config, project_root
from elta_lightning.errors import ConfigError, EltaError
from elta_lightning.run import train
from elta_lightning.runs import run_dir_for

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

#: The W&B macro our ``command`` must end with: one ``key=value`` word per sampled parameter.
ARGS_MACRO = "${args_no_hyphens}"
SEARCH_METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
#: Top-level keys of a W&B sweep config.
SWEEP_KEYS = {
    "program",
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "command",
    "name",
    "description",
    "project",
    "entity",
    "run_cap",
    "controller",
}
#: W&B's parameter distributions (the local runner maps those Optuna can represent).
WANDB_DISTRIBUTIONS = {
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "log_uniform_values",
    "q_log_uniform",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
}
RANGE_DISTRIBUTIONS = {"int_uniform", "uniform", "q_uniform", "log_uniform_values", "log_uniform"}
RANGE_DISTRIBUTIONS |= {"q_log_uniform_values", "q_log_uniform", "inv_log_uniform"}
RANGE_DISTRIBUTIONS |= {"inv_log_uniform_values"}
TRIAL_FILE = "sweep_trial.json"
#: Optuna heartbeat (seconds): a trial whose process died is marked failed (and queued again)
#: once its heartbeat is older than the grace period.
HEARTBEAT_S = 60
GRACE_S = 180
DEFAULT_WANDB_URL = "https://api.wandb.ai"
LOCAL_HINT = "run the sweep without a server instead: elta sweep FILE --local --trials N"


# ----- sweep files --------------------------------------------------------------------------


@dataclass
class Sweep:
    """A checked sweep file: its path and its W&B sweep config (a plain dict)."""

    path: Path
    config: dict[str, Any]

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def metric(self) -> str:
        return self.config["metric"]["name"]

    @property
    def goal(self) -> str:
        return self.config["metric"].get("goal", "minimize")

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.config["parameters"]

    @property
    def fixed(self) -> list[str]:
        """The ``key=value`` words of its command (``method=elta`` and any fixed arguments)."""
        return fixed_words(self.config["command"])


def sweep_files() -> list[str]:
    """Names of the sweep files shipped in ``experiments/sweeps/``."""
    return sorted(p.stem for p in (project_root() / "experiments" / "sweeps").glob("*.yaml"))


def find_sweep_file(file: str | Path) -> Path:
    """``file`` as given, else relative to the project root, else ``experiments/sweeps/<file>.yaml``
    (``elta sweep lds``)."""
    path = Path(file)
    if path.is_file():
        return path
    root = project_root()
    for candidate in (root / path, root / "experiments" / "sweeps" / f"{file}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no sweep file {str(file)!r}; sweep files (experiments/sweeps): {sweep_files()}"
    )


def load_sweep(file: str | Path) -> Sweep:
    """Read and check a sweep file (see :func:`check_sweep`)."""
    path = find_sweep_file(file)
    text = path.read_text()
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        hint = " (quote ${...} macros inside [...] lists, or list them one a line)"
        raise ConfigError(
            f"{path}: not valid YAML: {_one_line(error)}{hint if '${' in text else ''}"
        ) from error
    check_sweep(config, str(path))
    return Sweep(path=path, config=config)


def check_sweep(config: Any, origin: str) -> None:
    """A W&B sweep config our program can run: method grid/random/bayes, a metric with a goal,
    scalar parameters on dotted keys, a hyperband ``early_terminate`` if any, and the command
    ``[${env}, elta, train, key=value..., ${args_no_hyphens}]``. Raise :class:`ConfigError`."""
    if not isinstance(config, dict):
        raise ConfigError(f"{origin}: expected a mapping (a W&B sweep config)")
    unknown = sorted(set(config) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{origin}: unknown sweep keys {unknown}; W&B's are {sorted(SWEEP_KEYS)}")
    if config.get("method") not in SEARCH_METHODS:
        raise ConfigError(
            f"{origin}: method must be one of {SEARCH_METHODS}, got {config.get('method')!r}"
        )
    metric = config.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise ConfigError(
            f"{origin}: metric needs a name, e.g. {{name: val/srcc_best, goal: maximize}}"
        )
    if metric.get("goal", "minimize") not in GOALS:
        raise ConfigError(f"{origin}: metric.goal must be one of {GOALS}, got {metric['goal']!r}")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise ConfigError(f"{origin}: parameters must map dotted config keys to their values")
    for key, parameter in parameters.items():
        check_parameter(str(key), parameter, origin)
    if config.get("early_terminate") is not None:
        check_early_terminate(config["early_terminate"], origin)
    run_cap = config.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise ConfigError(f"{origin}: run_cap must be an integer >= 1, got {run_cap!r}")
    check_command(config.get("command"), origin)
    pinned = [k for k in _keys(fixed_words(config["command"])) if k in parameters]
    if pinned:
        raise ConfigError(f"{origin}: {pinned} are both fixed in the command and swept")


def check_parameter(key: str, parameter: Any, origin: str) -> None:
    """One parameter: ``value``, ``values`` (non-empty, scalars, no null) or a distribution over
    ``min``/``max`` (numbers). Nested parameters are not supported (keys are already dotted)."""
    where = f"{origin}: parameter {key!r}"
    if key in ("dataset", "method") or "=" in key or not key:
        raise ConfigError(f"{where}: not a config key (the command picks dataset and method)")
    if not isinstance(parameter, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{values: [...]}}")
    if "parameters" in parameter:
        raise ConfigError(f"{where}: nested parameters are not supported: use dotted keys")
    distribution = parameter.get("distribution")
    if distribution is not None and distribution not in WANDB_DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {distribution!r}")
    if "value" in parameter:
        _check_scalar(parameter["value"], where)
        return
    if "values" in parameter:
        values = parameter["values"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: values must be a non-empty list")
        for value in values:
            _check_scalar(value, where)
        return
    if distribution in ("normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta"):
        return  # W&B only (mu/sigma or a/b); the local runner refuses them
    low, high = parameter.get("min"), parameter.get("max")
    if not (_is_number(low) and _is_number(high)):
        raise ConfigError(
            f"{where}: needs values, value, or numeric min and max (YAML reads 1e-5 as a string: "
            "write 1.0e-5)"
        )
    if low > high:
        raise ConfigError(f"{where}: min {low} > max {high}")
    if distribution in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
        raise ConfigError(f"{where}: {distribution} needs min > 0, got {low}")


def check_early_terminate(early_terminate: Any, origin: str) -> None:
    """W&B's hyperband: ``min_iter`` or ``max_iter`` with ``s``; ``eta`` >= 2."""
    where = f"{origin}: early_terminate"
    if not isinstance(early_terminate, dict) or early_terminate.get("type") != "hyperband":
        raise ConfigError(f"{where}: only type hyperband exists in W&B")
    for name in ("min_iter", "max_iter", "s", "eta"):
        value = early_terminate.get(name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}.{name} must be an integer >= 1, got {value!r}")
    if early_terminate.get("eta", 3) < 2:
        raise ConfigError(f"{where}.eta must be >= 2")
    has_max = early_terminate.get("max_iter") is not None and early_terminate.get("s") is not None
    if early_terminate.get("min_iter") is None and not has_max:
        raise ConfigError(f"{where}: needs min_iter, or max_iter and s")


def check_command(command: Any, origin: str) -> None:
    """``[${env}, elta, train, <key=value>..., ${args_no_hyphens}]`` (``${env}`` optional)."""
    shape = f"[${{env}}, elta, train, method=<name>, {ARGS_MACRO}]"
    if not isinstance(command, list) or not all(isinstance(w, str) for w in command):
        raise ConfigError(f"{origin}: command must be a list of words: {shape}")
    start = 1 if command[:1] == ["${env}"] else 0
    if command[start : start + 2] != ["elta", "train"] or command[-1:] != [ARGS_MACRO]:
        raise ConfigError(f"{origin}: command must run the elta train CLI: {shape}")
    for word in command[start + 2 : -1]:
        if "=" not in word or word.startswith(("-", "$")):
            raise ConfigError(f"{origin}: command word {word!r} is not a key=value override")


def fixed_words(command: Sequence[str]) -> list[str]:
    """The ``key=value`` words of a checked command (between ``train`` and the macro)."""
    return list(command[command.index("train") + 1 : command.index(ARGS_MACRO)])


def with_fixed_args(sweep: Sweep, overrides: Sequence[str]) -> dict[str, Any]:
    """The sweep config with the fixed ``key=value`` arguments written into its command, before
    ``${args_no_hyphens}``: every agent's every run gets them. A fixed key that is also a swept
    parameter pins it (the parameter is removed). ``method=`` is refused: it is the file's."""
    words = [str(w) for w in overrides]
    for word in words:
        if "=" not in word:
            raise ConfigError(f"override {word!r} is not of the form key=value")
    keys = _keys(words)
    if "method" in keys:
        raise ConfigError(
            f"method= is set by the sweep file ({' '.join(sweep.fixed)}): use the sweep file of "
            f"the method you want, one of {sweep_files()}"
        )
    config = copy.deepcopy(sweep.config)
    for key in keys:
        if key in config["parameters"]:
            del config["parameters"][key]
            log.info("sweep: %s is fixed on the command line: not searched", key)
    if not config["parameters"]:
        raise ConfigError(f"{sweep.path}: every parameter is fixed on the command line")
    command = config["command"]
    at = command.index(ARGS_MACRO)
    config["command"] = [*command[:at], *words, *command[at:]]
    return config


def first_sample(parameters: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One value of every parameter: its ``value``, first of its ``values``, or its ``min``."""
    sample = {}
    for key, parameter in parameters.items():
        if "value" in parameter:
            sample[key] = parameter["value"]
        elif "values" in parameter:
            sample[key] = parameter["values"][0]
        elif parameter.get("distribution") == "log_uniform":
            sample[key] = math.exp(parameter["min"])
        else:
            sample[key] = parameter.get("min", parameter.get("mu"))
    return sample


def check_applies(config: Mapping[str, Any]) -> DictConfig:
    """Load the config of the command's fixed words and of one sample of every parameter: an
    unknown key or a wrong type fails before any run (and before the W&B server)."""
    words = fixed_words(config["command"])
    base = load_config(words)
    try:
        load_config([*words, *sweep_args(first_sample(config["parameters"]))])
    except ConfigError as error:
        raise ConfigError(f"a sweep parameter does not apply: {error}") from error
    return base


def sweep_args(params: Mapping[str, Any]) -> list[str]:
    """``${args_no_hyphens}`` as the W&B agent renders it: ``f"{key}={value}"`` per parameter
    (``wandb.sdk.launch.sweeps.utils.create_sweep_command_args``)."""
    return [f"{key}={value}" for key, value in params.items()]


def agent_command(config: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    """The argv a W&B agent runs for one run of ``config`` with sampled ``params``
    (``${env}`` -> ``/usr/bin/env``, ``${args_no_hyphens}`` -> ``key=value`` words)."""
    argv: list[str] = []
    for word in config["command"]:
        if word == "${env}":
            argv.append("/usr/bin/env")
        elif word == ARGS_MACRO:
            argv.extend(sweep_args(params))
        else:
            argv.append(str(word))
    return argv


# ----- W&B parameters -> Optuna ---------------------------------------------------------------


def distribution_of(parameter: Mapping[str, Any]) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of a W&B parameter.

    ``value`` -> categorical of one; ``values`` (or ``distribution: categorical``) ->
    categorical; ``int_uniform`` -> int; ``uniform`` -> float; ``q_uniform`` -> stepped int when
    min, max and q are integers, else stepped float; ``log_uniform_values`` -> log float;
    ``log_uniform`` (min/max are natural-log exponents) -> log float over [e^min, e^max], the
    same distribution; ``q_log_uniform_values`` -> log int (integer min >= 1, q 1), else log
    float without the step. No ``distribution`` with min/max: int_uniform when both are
    integers, else uniform (as W&B infers). Other distributions raise :class:`ConfigError`."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if "value" in parameter:
        return CategoricalDistribution([parameter["value"]])
    kind = parameter.get("distribution")
    if "values" in parameter and kind in (None, "categorical", "constant"):
        return CategoricalDistribution(list(parameter["values"]))
    low, high = parameter.get("min"), parameter.get("max")
    if kind is None:
        kind = "int_uniform" if _is_int(low) and _is_int(high) else "uniform"
    if kind == "int_uniform":
        return IntDistribution(int(low), int(high))
    if kind == "uniform":
        return FloatDistribution(float(low), float(high))
    if kind == "q_uniform":
        q = parameter.get("q", 1)
        if _is_int(low) and _is_int(high) and _is_int(q):
            return IntDistribution(low, high, step=q)
        return FloatDistribution(float(low), float(high), step=float(q))
    if kind == "log_uniform_values":
        return FloatDistribution(float(low), float(high), log=True)
    if kind == "log_uniform":
        return FloatDistribution(math.exp(low), math.exp(high), log=True)
    if kind == "q_log_uniform_values":
        if _is_int(low) and _is_int(high) and low >= 1 and parameter.get("q", 1) == 1:
            return IntDistribution(low, high, log=True)
        log.warning(
            "sweep: q_log_uniform_values over [%s, %s]: sampled without its step q", low, high
        )
        return FloatDistribution(float(low), float(high), log=True)
    raise ConfigError(
        f"distribution {kind!r} has no Optuna equivalent for a local sweep: use values, "
        "uniform, int_uniform, q_uniform, log_uniform or log_uniform_values"
    )


def grid_values(parameter: Mapping[str, Any]) -> list[Any]:
    """The points of a parameter in a grid: its ``values`` (or ``value``), or every integer /
    ``q`` step of an ``int_uniform`` / ``q_uniform`` range."""
    from optuna.distributions import CategoricalDistribution

    distribution = distribution_of(parameter)
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    kind = parameter.get("distribution") or ("int_uniform" if _is_int(parameter.get("min")) else "")
    if kind in ("int_uniform", "q_uniform"):
        step = distribution.step
        count = int(round((distribution.high - distribution.low) / step)) + 1
        points = [distribution.low + i * step for i in range(count)]
        return [int(p) if isinstance(step, int) else round(p, 12) for p in points]
    raise ConfigError(f"a grid needs values (or int_uniform / q_uniform), not {kind!r}")


def search_space(
    parameters: Mapping[str, Mapping[str, Any]], method: str
) -> dict[str, optuna.distributions.BaseDistribution]:
    """The Optuna distribution of every parameter (categorical over the points in a grid)."""
    from optuna.distributions import CategoricalDistribution

    space = {}
    for key, parameter in parameters.items():
        try:
            if method == "grid":
                space[key] = CategoricalDistribution(grid_values(parameter))
            else:
                space[key] = distribution_of(parameter)
        except ConfigError as error:
            raise ConfigError(f"parameter {key!r}: {error}") from error
    return space


def grid_size(space: Mapping[str, optuna.distributions.BaseDistribution]) -> int:
    """Points of a grid (its search space is all categorical)."""
    return math.prod(len(d.choices) for d in space.values())


def sampler_for(
    method: str, space: Mapping[str, optuna.distributions.BaseDistribution], seed: int
) -> optuna.samplers.BaseSampler:
    """grid -> GridSampler over the categorical points, random -> RandomSampler, bayes ->
    TPESampler (the ELTA authors searched with NNI's TPE); all seeded."""
    import optuna

    if method == "grid":
        points = {key: list(d.choices) for key, d in space.items()}
        return optuna.samplers.GridSampler(points, seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "bayes":
        return optuna.samplers.TPESampler(seed=seed)
    raise ConfigError(f"sweep method must be one of {SEARCH_METHODS}, got {method!r}")


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


# ----- local sweeps (Optuna) ----------------------------------------------------------------


def study_name_of(config: Mapping[str, Any], path: Path, dataset: str) -> str:
    """``<name: or the file's stem>-<dataset>`` (``elta-aadb``)."""
    return f"{config.get('name') or path.stem}-{dataset}"


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial with an outcome: completed, pruned, or failed with an error of its own (not one
    interrupted by Ctrl-C or killed)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def requeue_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue an interrupted trial's parameters again (once); also Optuna's heartbeat callback for
    trials whose process died."""
    from optuna.trial import TrialState

    if trial.state != TrialState.FAIL or "error" in trial.user_attrs or not trial.params:
        return
    trials = study.get_trials(deepcopy=False)
    if any(t.user_attrs.get("retry_of") == trial.number for t in trials):
        return
    study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
    log.info("sweep: trial %d was interrupted: queued again with its parameters", trial.number)


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """An RDB storage with a heartbeat: trials of dead processes fail and are queued again."""
    import inspect

    import optuna

    names = inspect.signature(optuna.storages.RDBStorage).parameters
    callback = (
        "heartbeat_stale_trial_callback"
        if "heartbeat_stale_trial_callback" in names
        else "failed_trial_callback"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat options are "experimental"
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            **{callback: requeue_interrupted},
        )


def masked(url: str) -> str:
    """A storage URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: shown as given, it has no parsable password
        return url


def run_local_sweep(
    file: str | Path,
    trials: int,
    overrides: Sequence[str] = (),
    *,
    storage: str | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> str:
    """Run a sweep file with Optuna until its study has ``trials`` trials with an outcome (see
    the module docstring for resume semantics); return a summary: trials completed / pruned /
    failed, the best value, its parameters and run folder.

    ``overrides``: fixed ``key=value`` arguments of every trial. ``storage``: an Optuna RDB URL
    (default: SQLite in the sweep folder). ``pruner``: replaces the one ``early_terminate``
    maps to (tests, experiments)."""
    import optuna

    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    sweep = load_sweep(file)
    config = with_fixed_args(sweep, overrides)
    fixed = fixed_words(config["command"])
    base = check_applies(config)
    check_single_process(base)
    space = search_space(config["parameters"], sweep.method)
    study_name = study_name_of(config, sweep.path, base.data.name)
    folder = Path(base.runs_dir) / "sweeps" / study_name
    folder.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(folder / 'optuna.db').resolve()}"
    search = search_of(sweep, config)
    try:
        store = rdb_storage(url)
        direction = "maximize" if sweep.goal == "maximize" else "minimize"
        study = optuna.create_study(
            storage=store, study_name=study_name, direction=direction, load_if_exists=True
        )
    except Exception as error:  # a bad URL, SQLAlchemy's errors: unreachable database, credentials
        raise EltaError(
            f"cannot open the Optuna storage {masked(url)}: {_one_line(error)}"
        ) from error
    existing = study.get_trials(deepcopy=False)
    check_study(study, search, fixed, base, folder, study_name, existing)
    seed = sampler_seed(sweep.method, int(base.seed), len(existing), shared=storage is not None)
    study = optuna.load_study(
        study_name=study_name,
        storage=store,
        sampler=sampler_for(sweep.method, space, seed),
        pruner=pruner or pruner_for(config.get("early_terminate"), int(base.trainer.max_epochs)),
    )
    for trial in existing:
        requeue_interrupted(study, trial)
    target = trials
    if sweep.method == "grid" and grid_size(space) < target:
        log.info("sweep: the grid has %d points: --trials %d capped", grid_size(space), trials)
        target = grid_size(space)
    if config.get("run_cap") and config["run_cap"] < target:
        target = config["run_cap"]
    done = sum(counts_toward_budget(t) for t in existing)
    objective = TrialObjective(study_name, fixed, space, sweep.metric)

    def stop_at_target(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False)) >= target:
            study.stop()

    interrupted = False
    if done < target:
        try:
            study.optimize(
                objective,
                n_trials=target - done,
                catch=(Exception,),
                callbacks=[stop_at_target],
                gc_after_trial=True,
            )
        except KeyboardInterrupt:
            interrupted = True
    summary = summarize(study, sweep, target, objective.ran, interrupted, url)
    (folder / "summary.json").write_text(json.dumps(summary_record(study, sweep, url), indent=2))
    return summary


def sampler_seed(method: str, seed: int, trials: int, shared: bool) -> int:
    """The sampler's seed. A grid keeps ``seed``: Optuna's grid ids index its seeded shuffle of
    the points, so every call and every worker must shuffle alike (trial k < grid size takes
    point k, so workers do not collide). Random and TPE samplers restart their random stream
    in every call: ``seed`` plus the trials so far, so a resumed sweep does not propose the
    first points again, plus the process id on a shared storage (workers started at once)."""
    if method == "grid":
        return seed
    return seed + trials + (os.getpid() if shared else 0)


def check_single_process(cfg: DictConfig) -> None:
    """Local trials run inside this process: DDP would start the whole sweep once per rank."""
    if int(cfg.trainer.devices) > 1 or int(cfg.trainer.num_nodes) > 1:
        raise ConfigError(
            "a local sweep runs each trial in this process, on one device (trainer.devices=1, "
            "trainer.num_nodes=1): for DDP trials use a W&B sweep, or run one local worker per "
            "GPU (CUDA_VISIBLE_DEVICES=<i>) on a shared --storage URL"
        )


def search_of(sweep: Sweep, config: Mapping[str, Any]) -> dict[str, Any]:
    """What makes two sweeps the same study: method, metric, parameters (after pinning),
    early_terminate and the file's own command; not the fixed arguments of the command line
    (those may differ per machine: data.root)."""
    keys = ("method", "metric", "parameters", "early_terminate")
    record = {k: config.get(k) for k in keys}
    record["command"] = sweep.config["command"]
    return json.loads(json.dumps(record))


def check_study(
    study: optuna.Study,
    search: dict[str, Any],
    fixed: list[str],
    base: DictConfig,
    folder: Path,
    study_name: str,
    existing: list[optuna.trial.FrozenTrial],
) -> None:
    """A new study records its search and fixed arguments; a resumed one must have the same
    search (fixed arguments may differ, e.g. data.root per machine: logged)."""
    stored = study.user_attrs.get("search")
    if stored is None:
        if not existing:
            earlier = sorted(Path(base.runs_dir).glob(f"{base.data.name}/*/{study_name}-trial*"))
            if earlier:
                raise ConfigError(
                    f"run folders of an earlier study {study_name!r} exist ({earlier[0]}, ...) but "
                    f"its storage does not: move them away, or set name: in the sweep file"
                )
        study.set_user_attr("search", search)
        study.set_user_attr("fixed", fixed)
        (folder / "sweep.yaml").write_text(
            yaml.safe_dump({**search, "fixed": fixed}, sort_keys=False)
        )
        return
    if stored != search:
        changed = sorted(k for k in search if stored.get(k) != search[k])
        raise ConfigError(
            f"study {study_name!r} was made from another search (differs in {changed}): delete "
            f"{folder} (and its run folders) to start over, or set name: in the sweep file"
        )
    if study.user_attrs.get("fixed") != fixed:
        log.warning(
            "sweep: resuming %s with other fixed arguments: %s (was %s)",
            study_name,
            fixed,
            study.user_attrs.get("fixed"),
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
            message = _one_line(error)
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


def suggest(trial: optuna.trial.Trial, key: str, distribution: Any) -> Any:
    """Sample ``key`` from an Optuna distribution through the trial's public API."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, list(distribution.choices))
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            key, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    return trial.suggest_float(
        key, distribution.low, distribution.high, step=distribution.step, log=distribution.log
    )


def close_wandb_run(state: str) -> None:
    """Finish a W&B run a trial left open (a finished run closes its own): the next trial must
    not log into it. Pruned runs end as finished with ``sweep/state`` in the summary."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is None:
        return
    run.summary["sweep/state"] = state
    run.finish(exit_code=0 if state in ("complete", "pruned") else 1)


def summary_record(study: optuna.Study, sweep: Sweep, url: str) -> dict[str, Any]:
    """The study's state as JSON: counts, and the best trial's value, parameters, run folder."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "failed": sum(counts_toward_budget(t) and t.state == TrialState.FAIL for t in trials),
        "interrupted": sum(
            t.state == TrialState.FAIL and not counts_toward_budget(t) for t in trials
        ),
    }
    best = best_trial(study)
    return {
        "study": study.study_name,
        "storage": masked(url),
        "metric": sweep.metric,
        "goal": sweep.goal,
        "counts": counts,
        "best": None
        if best is None
        else {
            "trial": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
        },
    }


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The best completed trial, or None."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def summarize(
    study: optuna.Study, sweep: Sweep, target: int, ran: int, interrupted: bool, url: str
) -> str:
    """The printed summary of a local sweep."""
    record = summary_record(study, sweep, url)
    counts = record["counts"]
    done = counts["complete"] + counts["pruned"] + counts["failed"]
    lines = [
        f"== sweep {study.study_name} ({sweep.method}, {sweep.goal} {sweep.metric}) ==",
        f"  trials: {done} of {target} done: completed {counts['complete']}, pruned "
        f"{counts['pruned']}, failed {counts['failed']} (this call ran {ran})",
    ]
    if counts["interrupted"]:
        lines.append(
            f"  interrupted: {counts['interrupted']} (not counted; queued again with their "
            "parameters)"
        )
    best = record["best"]
    if best is None:
        lines.append("  best: none (no trial completed)")
    else:
        lines.append(f"  best: trial {best['trial']}, {sweep.metric} = {best['value']:.4f}")
        lines.extend(f"    {key} = {value}" for key, value in best["params"].items())
        lines.append(f"  run folder: {best['run_dir']}")
    for trial in study.get_trials(deepcopy=False):
        if counts_toward_budget(trial) and "error" in trial.user_attrs:
            lines.append(f"  failed: trial {trial.number}: {trial.user_attrs['error']}")
    lines.append(f"  study: {study.study_name} in {masked(url)}")
    if interrupted or done < target:
        lines.append("  interrupted: run the same command to resume")
    return "\n".join(lines)


# ----- W&B sweeps ---------------------------------------------------------------------------


def run_wandb_sweep(
    file: str | Path,
    overrides: Sequence[str] = (),
    count: int | None = None,
    project: str | None = None,
    entity: str | None = None,
) -> None:
    """Create the sweep on the W&B server, with the fixed arguments in its command, and run an
    agent here for ``count`` runs (default: until the sweep is done). The agent runs each run's
    command as a subprocess (``elta train ...``), so multi-GPU DDP runs work.

    Raises :class:`EltaError` (one line) without a server to talk to: ``WANDB_MODE`` offline or
    disabled, no API key, or the server unreachable."""
    sweep = load_sweep(file)
    config = with_fixed_args(sweep, overrides)
    base = check_applies(config)  # a bad key fails here, not in every run
    require_wandb_server()
    base_url = os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)
    check_reachable(base_url)
    project = project or config.get("project") or base.logger.project
    entity = entity or config.get("entity") or base.logger.entity
    ensure_elta_on_path()

    import wandb

    try:
        sweep_id = wandb.sweep(config, entity=entity, project=project)
    except Exception as error:
        raise EltaError(
            f"could not create the W&B sweep on {base_url}: {_one_line(error)}"
        ) from error
    log.info(
        "sweep %s: agent here for %s runs; more agents: wandb agent %s/%s/%s",
        sweep_id,
        count or "all",
        entity or "<entity>",
        project,
        sweep_id,
    )
    try:
        wandb.agent(sweep_id, entity=entity, project=project, count=count)
    except Exception as error:
        raise EltaError(f"the W&B agent of sweep {sweep_id} stopped: {_one_line(error)}") from error


def wandb_api_key() -> str | None:
    """The W&B API key: ``WANDB_API_KEY``, else the netrc entry of the server (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)).hostname
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host or "")
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def require_wandb_server() -> None:
    """A W&B sweep lives on the server: refuse offline/disabled mode and a missing API key."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        raise EltaError(f"a W&B sweep needs the W&B server, but WANDB_MODE={mode}; {LOCAL_HINT}")
    if not wandb_api_key():
        raise EltaError(
            "a W&B sweep needs the W&B server and an API key, and no API key is set "
            f"(WANDB_API_KEY or `wandb login`); {LOCAL_HINT}"
        )


def check_reachable(base_url: str, timeout: float = 10.0) -> None:
    """Fail fast, in one line, when the W&B server cannot be reached (W&B's client retries for
    a long time)."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as error:
        raise EltaError(
            f"cannot reach the W&B server {base_url} ({error}); {LOCAL_HINT}"
        ) from error


def ensure_elta_on_path() -> None:
    """The agent runs ``/usr/bin/env elta train ...``: put this installation's ``elta`` first on
    PATH (``make sweep`` runs .venv/bin/elta without activating the environment)."""
    ours = Path(sys.executable).parent / "elta"
    if ours.is_file() and shutil.which("elta") != str(ours):
        os.environ["PATH"] = os.pathsep.join([str(ours.parent), os.environ.get("PATH", "")])


# ----- helpers ------------------------------------------------------------------------------


def _keys(words: Sequence[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scalar(value: Any, where: str) -> None:
    if value is None:
        raise ConfigError(f"{where}: null is passed as the string 'None': leave it out")
    if not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: values must be scalars, got {value!r}")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


__all__ = [
    "PruningCallback",
    "Sweep",
    "agent_command",
    "distribution_of",
    "grid_values",
    "load_sweep",
    "check_applies",
    "pruner_for",
    "run_local_sweep",
    "run_wandb_sweep",
    "sampler_for",
    "search_space",
    "sweep_args",
    "with_fixed_args",
]
