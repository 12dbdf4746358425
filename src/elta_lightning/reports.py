"""What a run reports beyond its metrics: per-group SRCC (e.g. TAD66K themes) and run notes."""

from __future__ import annotations

import numpy as np
from scipy import stats

from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.label_stats import SHOT_NAMES, LabelStats

#: Extra label columns whose groups get their own test SRCC (TAD66K themes, PARA semantics).
GROUP_COLUMNS = ("theme", "semantic")


def group_srcc(
    groups: list, target: np.ndarray, predicted: np.ndarray, min_size: int = 3
) -> dict[str, dict[str, float]]:
    """SRCC and size of each group with at least ``min_size`` rows (rows with group ``None`` are
    left out); a group whose targets or predictions are all equal gets NaN."""
    names = np.asarray(["" if g is None else str(g) for g in groups], dtype=object)
    report = {}
    for name in sorted(set(names) - {""}):
        rows = names == name
        if rows.sum() < min_size:
            continue
        with np.errstate(invalid="ignore"):
            value = stats.spearmanr(target[rows], predicted[rows]).statistic
        report[name] = {"srcc": float(value), "count": int(rows.sum())}
    return report


def run_notes(datamodule: IAADataModule, stats: LabelStats) -> dict:
    """Split sizes, skipped rows, split warnings (model selection on test images, ...), the
    tail-region cuts and the label statistics (bins, counts, shot regions): what a reader of the
    run needs to trust its numbers."""
    cuts = stats.cuts
    many, few = stats.shot_thresholds
    shots = stats.shot_of_bin().tolist()
    return {
        "dataset": datamodule.name,
        "split_sizes": {split: len(table) for split, table in datamodule.tables.items()},
        "skipped_rows": dict(datamodule.skipped),
        "split_warnings": list(datamodule.split_warnings),
        "region_cuts": {"low_max": cuts[0], "high_min": cuts[1]},
        "label_stats": {
            **stats.hparams(),
            "shot_thresholds": {"many_min_count": many, "few_below_count": few},
            "shot_of_bin": [SHOT_NAMES[s] for s in shots],
        },
    }
