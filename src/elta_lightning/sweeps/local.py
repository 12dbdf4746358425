"""Local sweeps: ``elta sweep FILE --local --trials N [--storage URL]``.

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

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from elta_lightning.errors import ConfigError, EltaError
from elta_lightning.sweeps.files import (
    check_applies,
    fixed_words,
    load_sweep,
    one_line,
    with_fixed_args,
)
from elta_lightning.sweeps.objective import TrialObjective, check_single_process
from elta_lightning.sweeps.pruning import pruner_for
from elta_lightning.sweeps.search import grid_size, sampler_for, search_space
from elta_lightning.sweeps.study import (
    check_study,
    counts_toward_budget,
    masked,
    rdb_storage,
    requeue_interrupted,
    sampler_seed,
    search_of,
    study_name_of,
    summarize,
    summary_record,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__package__)


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
        study = optuna.create_study(
            storage=store, study_name=study_name, direction=sweep.goal, load_if_exists=True
        )
    except Exception as error:  # a bad URL, SQLAlchemy's errors: unreachable database, credentials
        raise EltaError(
            f"cannot open the Optuna storage {masked(url)}: {one_line(error)}"
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
    record = summary_record(study, sweep, url)
    (folder / "summary.json").write_text(json.dumps(record, indent=2))
    return summarize(study, sweep, record, target, objective.ran, interrupted)
