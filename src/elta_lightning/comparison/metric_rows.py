"""What ``elta compare`` compares: the metric rows of its table, in order, and the test-set
regions and shots of the tail MAEs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricRow:
    """A row of the table: the ``metrics.json`` key, its label, whether higher is better, the
    decimals shown, and whether its difference to the reference is bootstrapped from the
    predictions (the rest come from ``metrics.json`` only)."""

    key: str
    label: str
    higher_is_better: bool
    decimals: int = 4
    bootstrapped: bool = True


REGIONS = ("low", "mid", "high")
SHOTS = ("many", "medium", "few")

METRIC_ROWS: tuple[MetricRow, ...] = (
    MetricRow("test/srcc", "SRCC", True),
    MetricRow("test/plcc", "PLCC", True),
    MetricRow("test/acc", "accuracy", True),
    MetricRow("test/mae", "MAE", False),
    MetricRow("test/mae_low", "MAE low (tail)", False),
    MetricRow("test/mae_mid", "MAE mid", False),
    MetricRow("test/mae_high", "MAE high (tail)", False),
    MetricRow("test/mae_many", "MAE many-shot", False),
    MetricRow("test/mae_medium", "MAE medium-shot", False),
    MetricRow("test/mae_few", "MAE few-shot", False),
    MetricRow("test/mae_balanced", "balanced MAE", False),
    MetricRow("test/emd1", "EMD r=1", False, bootstrapped=False),
    MetricRow("test/emd2", "EMD r=2", False, bootstrapped=False),
    MetricRow("val/srcc_best", "best val SRCC", True, bootstrapped=False),
    MetricRow("train/epoch_time_s", "time per epoch (s)", False, 3, bootstrapped=False),
    MetricRow("train/peak_memory_mb", "peak memory (MB)", False, 0, bootstrapped=False),
)

#: The keys whose difference to the reference is bootstrapped (see :func:`prediction_metrics`).
BOOTSTRAPPED = tuple(row.key for row in METRIC_ROWS if row.bootstrapped)
