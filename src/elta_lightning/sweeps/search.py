"""The search of a sweep file as Optuna's: a distribution per W&B parameter, the points of
a grid, the sampler of each search method, and sampling through a trial."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from elta_lightning.errors import ConfigError
from elta_lightning.sweeps.files import SEARCH_METHODS

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__package__)


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
