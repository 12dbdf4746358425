"""The Optuna study of a local sweep: its name, storage and recorded search, resuming it
(which trials count, interrupted ones queued again, the sampler's seed), and its summary."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig

from elta_lightning.errors import ConfigError
from elta_lightning.sweeps.files import Sweep

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__package__)

#: Optuna heartbeat (seconds): a trial whose process died is marked failed (and queued again)
#: once its heartbeat is older than the grace period.
HEARTBEAT_S = 60
GRACE_S = 180


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


def sampler_seed(method: str, seed: int, trials: int, shared: bool) -> int:
    """The sampler's seed. A grid keeps ``seed``: Optuna's grid ids index its seeded shuffle of
    the points, so every call and every worker must shuffle alike (trial k < grid size takes
    point k, so workers do not collide). Random and TPE samplers restart their random stream
    in every call: ``seed`` plus the trials so far, so a resumed sweep does not propose the
    first points again, plus the process id on a shared storage (workers started at once)."""
    if method == "grid":
        return seed
    return seed + trials + (os.getpid() if shared else 0)


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
    study: optuna.Study,
    sweep: Sweep,
    record: Mapping[str, Any],
    target: int,
    ran: int,
    interrupted: bool,
) -> str:
    """The printed summary of a local sweep, from its :func:`summary_record`."""
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
    lines.append(f"  study: {study.study_name} in {record['storage']}")
    if interrupted or done < target:
        lines.append("  interrupted: run the same command to resume")
    return "\n".join(lines)
