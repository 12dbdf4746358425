"""Sweep files: reading and checking them, and the command every run of a sweep executes
(fixed arguments written into it, sampled parameters rendered as W&B's agent does)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from elta_lightning.config import load_config, project_root
from elta_lightning.errors import ConfigError

log = logging.getLogger(__package__)

#: The W&B macro our ``command`` must end with: one ``key=value`` word per sampled parameter.
ARGS_MACRO = "${args_no_hyphens}"
#: W&B's search methods (``method:``), all runnable locally too.
SEARCH_METHODS = ("grid", "random", "bayes")
#: ``metric.goal`` values.
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


def sweep_paths(root: Path | None = None) -> list[Path]:
    """The sweep files in ``<root>/experiments/sweeps/`` (default: the project's), sorted."""
    return sorted(((root or project_root()) / "experiments" / "sweeps").glob("*.yaml"))


def sweep_files() -> list[str]:
    """Names of the sweep files shipped in ``experiments/sweeps/``."""
    return [path.stem for path in sweep_paths()]


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
            f"{path}: not valid YAML: {one_line(error)}{hint if '${' in text else ''}"
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


def _keys(words: Sequence[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scalar(value: Any, where: str) -> None:
    if value is None:
        raise ConfigError(f"{where}: null is passed as the string 'None': leave it out")
    if not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: values must be scalars, got {value!r}")


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``: an error inside a one-line :class:`EltaError`."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
