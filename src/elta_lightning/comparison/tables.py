"""A group's numbers as text: the markdown table of the report and the rows of results.csv."""

from __future__ import annotations

import math
from collections.abc import Sequence

from elta_lightning.comparison.group import GroupComparison
from elta_lightning.comparison.metric_rows import METRIC_ROWS, MetricRow
from elta_lightning.comparison.statistics import Difference, mean_std


def _number(value: float, decimals: int, sign: bool = False) -> str:
    return "–" if math.isnan(value) else f"{value:{'+' if sign else ''}.{decimals}f}"


def mean_std_cell(values: Sequence[float | None], decimals: int) -> str:
    """``mean ± std`` over seeds; the mean alone for one seed; ``–`` for none."""
    mean, std, count = mean_std(values)
    if count < 2:
        return _number(mean, decimals)
    return f"{_number(mean, decimals)} ± {_number(std, decimals)}"


def difference_cell(difference: Difference | None, decimals: int) -> str:
    """``+0.0123 [+0.0040, +0.0210]``, prefixed ``≈`` when the interval contains 0."""
    if difference is None or math.isnan(difference.estimate) or difference.defined == 0:
        return "–"
    interval = (
        f"[{_number(difference.low, decimals, True)}, {_number(difference.high, decimals, True)}]"
    )
    mark = "≈ " if difference.contains_zero else ""
    return f"{mark}{_number(difference.estimate, decimals, True)} {interval}"


def shown_rows(group: GroupComparison) -> list[MetricRow]:
    """The metric rows defined in at least one run (EMD only with distributions, ...)."""
    return [row for row in METRIC_ROWS if group.has_values(row.key)]


def markdown_table(group: GroupComparison) -> str:
    """Rows: metrics; columns: each method's mean ± std over seeds, then each other method's
    difference to the reference with its 95 % interval."""
    others = [m for m in group.methods if m in group.differences]
    header = ["metric"]
    for method in group.methods:
        seeds = len(group.runs_of(method))
        ref = "reference, " if method == group.reference else ""
        header.append(f"{method} ({ref}{seeds} seed{'s' if seeds > 1 else ''})")
    header += [f"Δ {m} − {group.reference} [95 % CI]" for m in others]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    sizes = group.region_sizes()
    for row in shown_rows(group):
        size = f" ({sizes[row.key]} img)" if row.key in sizes else ""
        cells = [f"{row.label}{size} {'↑' if row.higher_is_better else '↓'}"]
        cells += [mean_std_cell(group.values(m, row.key), row.decimals) for m in group.methods]
        cells += [difference_cell(group.differences[m].get(row.key), row.decimals) for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_value(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def csv_rows(group: GroupComparison) -> list[dict[str, str]]:
    """One row per run (its metrics) and one per method (mean, std over seeds, and the
    difference to the reference with its interval for the bootstrapped metrics)."""
    rows = []
    for run in group.runs:
        row = {"group": group.label, "row": "run", "method": run.method, "seed": str(run.seed)}
        row["run_dir"] = str(run.path)
        rows.append(row | {r.key: _csv_value(run.metrics.get(r.key)) for r in METRIC_ROWS})
    for method in group.methods:
        seeds = ";".join(str(r.seed) for r in group.runs_of(method))
        row = {"group": group.label, "row": "method", "method": method, "seed": seeds}
        for metric in METRIC_ROWS:
            mean, std, _ = mean_std(group.values(method, metric.key))
            row |= {metric.key: _csv_value(mean), f"{metric.key}_std": _csv_value(std)}
            difference = group.differences.get(method, {}).get(metric.key)
            if difference is not None:
                row |= {
                    f"{metric.key}_diff": _csv_value(difference.estimate),
                    f"{metric.key}_diff_low": _csv_value(difference.low),
                    f"{metric.key}_diff_high": _csv_value(difference.high),
                }
        rows.append(row)
    return rows


def csv_columns() -> list[str]:
    """The columns of results.csv, in order."""
    columns = ["group", "row", "method", "seed", "run_dir"]
    for row in METRIC_ROWS:
        columns += [row.key, f"{row.key}_std"]
        if row.bootstrapped:
            columns += [f"{row.key}_diff", f"{row.key}_diff_low", f"{row.key}_diff_high"]
    return columns
