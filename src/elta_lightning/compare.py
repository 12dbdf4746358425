"""``elta compare-train`` / ``make compare``: train every (method, seed) with one budget, then
report on them (:mod:`elta_lightning.comparison`); and the markdown table of runs' metrics."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from elta_lightning.comparison import ComparisonReport, compare_runs
from elta_lightning.config import ConfigError, load_config
from elta_lightning.run import train
from elta_lightning.runs import config_changes, is_finished_run, run_dir_for

log = logging.getLogger(__name__)

#: (metrics key, row label) of the tables; arrows say which direction is better. The tail
#: regions are the training set's 0-20 / 20-80 / 80-100 % score percentiles.
REPORT_ROWS: tuple[tuple[str, str], ...] = (
    ("test/srcc", "SRCC ↑"),
    ("test/plcc", "PLCC ↑"),
    ("test/acc", "accuracy ↑"),
    ("test/mae", "MAE ↓"),
    ("test/mae_low", "MAE low (tail) ↓"),
    ("test/mae_mid", "MAE mid ↓"),
    ("test/mae_high", "MAE high (tail) ↓"),
    ("test/emd2", "EMD r=2 ↓"),
    ("val/srcc_best", "best val SRCC ↑"),
)


def markdown_table(
    columns: dict[str, dict[str, float]],
    rows: Sequence[tuple[str, str]] = REPORT_ROWS,
    change: bool = False,
) -> str:
    """A markdown table: one column per run (``columns``: title -> metrics), one row per metric
    of ``rows`` present in any run (missing values shown as ``-``). ``change`` adds the last
    column minus the first."""
    titles = list(columns)
    present = [(k, label) for k, label in rows if any(k in m for m in columns.values())]
    header = ["metric", *titles] + (["change"] if change else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, label in present:
        values = [columns[t].get(key, math.nan) for t in titles]
        cells = [label, *(_cell(v) for v in values)]
        if change:
            delta = values[-1] - values[0]
            cells.append("-" if math.isnan(delta) else f"{delta:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


#: Config keys in which the runs of one comparison differ by design (the rest is the budget).
PER_RUN_KEYS = ("seed", "run_id", "runs_dir", "logger", "resume")


def train_and_compare(
    methods: Sequence[str],
    seeds: int,
    overrides: Sequence[str] = (),
    reference: str = "vanilla",
    out: str | None = None,
) -> ComparisonReport:
    """Train every (method, seed 1..``seeds``) with the same ``overrides`` (one budget: data,
    backbone, optimiser, epochs), then compare them with :func:`compare_runs`.

    The runs of one comparison share a name derived from the budget (``cmp-<hash>``), used as
    their W&B group and in their run ids (``cmp-<hash>-seed<k>``), so calling again with the
    same arguments finds them: a finished run (``metrics.json`` written) with the same config is
    skipped, an unfinished one with the same config is resumed from its last checkpoint
    (``resume=<its folder>``; one of another config is trained again from scratch), and a
    finished one whose config differs (e.g. an edited recipe) is an error naming the keys,
    never silently overwritten.
    """
    if not methods or seeds < 1:
        raise ConfigError(f"need at least one method and one seed; got {list(methods)}, {seeds}")
    for item in overrides:
        if item.split("=", 1)[0] in ("method", "seed", "run_id", "parts"):
            raise ConfigError(f"compare-train sets methods and seeds itself; drop {item!r}")
    name = comparison_name(load_config(list(overrides)))
    run_dirs = []
    for method in methods:
        for seed in range(1, seeds + 1):
            cfg = load_config(
                [
                    *overrides,
                    f"method={method}",
                    f"seed={seed}",
                    f"run_id={name}-seed{seed}",
                    f"logger.group={name}",
                ]
            )
            run_dir = run_dir_for(cfg)
            if is_finished(run_dir, cfg):
                log.info("compare: %s is finished with this config: skipped", run_dir)
            elif (run_dir / "config.yaml").is_file():
                log.warning("compare: %s is unfinished: resuming it", run_dir)
                train(OmegaConf.merge(cfg, {"resume": str(run_dir)}), run_dir=run_dir)
            else:
                train(cfg, run_dir=run_dir)
            run_dirs.append(str(run_dir))
    base = load_config(list(overrides))
    report_dir = out or str(Path(base.runs_dir) / base.data.name / "compare" / name)
    return compare_runs(run_dirs, reference=reference, out=report_dir)


def comparison_name(base: DictConfig) -> str:
    """``cmp-<8 hex>``: a hash of the budget (the config without its per-run keys and method)."""
    budget = OmegaConf.to_container(base, resolve=True)
    for key in (*PER_RUN_KEYS, "method"):
        budget.pop(key, None)
    digest = hashlib.sha1(json.dumps(budget, sort_keys=True).encode()).hexdigest()
    return f"cmp-{digest[:8]}"


def is_finished(run_dir: Path, cfg: DictConfig) -> bool:
    """True if ``run_dir`` holds a finished run of ``cfg``; False if there is none or an
    unfinished one (which :func:`train_and_compare` resumes; one of another config is removed,
    to train again). A finished run of another config raises."""
    if not (run_dir / "config.yaml").is_file():
        return False
    changed = config_changes(run_dir, cfg)
    if not is_finished_run(run_dir):
        if changed:
            log.warning(
                "compare: %s is unfinished and of another config (%s): training it again "
                "from scratch",
                run_dir,
                changed[:8],
            )
            clear_run_folder(run_dir)
        return False
    if changed:
        raise ConfigError(
            f"{run_dir} holds a finished run of another config (differs in {changed[:8]}): "
            "remove the folder to train it again, or compare with other settings"
        )
    return True


@rank_zero_only
def clear_run_folder(run_dir: Path) -> None:
    """Remove an unfinished run's folder (rank 0; the others only read it)."""
    shutil.rmtree(run_dir, ignore_errors=True)
