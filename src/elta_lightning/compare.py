"""Side-by-side results: the markdown table of runs' metrics, and ``elta compare-demo`` (vanilla
vs ELTA on the built-in data set, same budget and seed)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from elta_lightning.config import ConfigError, load_config
from elta_lightning.run import run_id_for, train

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

DEMO_METHODS = ("vanilla", "elta")


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


@dataclass
class CompareResult:
    """The demo's table, where it was written, and each method's run folder and metrics."""

    table: str
    report: Path
    runs: dict[str, Path]
    metrics: dict[str, dict[str, float]]


def compare_demo(overrides: Sequence[str] = ()) -> CompareResult:
    """Train ``vanilla`` and ``elta`` on the built-in data set with the same overrides (budget),
    seed and run id, through :func:`elta_lightning.run.train`; write the table to
    ``<runs_dir>/synthetic/compare/<run id>.md`` (and ``.json``) and return it."""
    for item in overrides:
        if item.split("=", 1)[0] in ("dataset", "method"):
            raise ConfigError(f"compare-demo fixes the data set and the methods; drop {item!r}")
    base = load_config(["dataset=synthetic", *overrides])
    run_id = run_id_for(base)
    runs: dict[str, Path] = {}
    metrics: dict[str, dict[str, float]] = {}
    for method in DEMO_METHODS:
        cfg = load_config(["dataset=synthetic", f"method={method}", *overrides, f"run_id={run_id}"])
        result = train(cfg)
        runs[method], metrics[method] = result.run_dir, result.metrics
    result = CompareResult(
        table=markdown_table(metrics, change=True),
        report=Path(base.runs_dir) / "synthetic" / "compare" / f"{run_id}.md",
        runs=runs,
        metrics=metrics,
    )
    _write_report(result, f"seed {base.seed}, same budget: {' '.join(overrides) or 'defaults'}")
    return result


@rank_zero_only
def _write_report(result: CompareResult, setting: str) -> None:
    """The table as markdown (with the run folders) and the metrics as JSON, from rank 0."""
    result.report.parent.mkdir(parents=True, exist_ok=True)
    runs = "\n".join(f"- {method}: {path}" for method, path in result.runs.items())
    result.report.write_text(
        f"# vanilla vs ELTA on the built-in data set\n\n{setting}\n\n{result.table}\n\n{runs}\n"
    )
    summary = {"runs": {m: str(p) for m, p in result.runs.items()}, "metrics": result.metrics}
    result.report.with_suffix(".json").write_text(json.dumps(summary, indent=2, sort_keys=True))
