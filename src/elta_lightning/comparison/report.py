"""The report folder of ``elta compare``: report.md, results.csv and the plots of every
group; :func:`compare_runs` makes it from run folders."""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from elta_lightning.comparison.group import MIN_REGION_IMAGES, GroupComparison, compare_group
from elta_lightning.comparison.plots import plot_files, write_plots
from elta_lightning.comparison.runs import (
    COSMETIC_KEYS,
    METHOD_KEYS,
    PER_RUN_KEYS,
    ComparisonError,
    check_comparable,
    expand_run_paths,
    read_run,
    skip_reason,
    split_groups,
)
from elta_lightning.comparison.tables import csv_columns, csv_rows, markdown_table

log = logging.getLogger(__package__)


def procedure_text(reference: str, resamples: int, seed: int) -> str:
    """How to read the table, stated in the report."""
    return f"""\
- **mean ± std**: over the seeds of each method (sample std, ddof 1), from each run's
  metrics.json. MAE is on the data set's native scale; regions: low / mid / high by the training
  labels' 20th / 80th percentiles, many / medium / few by training images per label bin;
  balanced MAE is the mean of per-bin MAE.
- **Δ method − {reference} [95 % CI]**: paired bootstrap over the test images, which every run
  shares. {resamples} resamples of the N test images with replacement, index matrix
  `numpy.random.default_rng({seed}).integers(0, N, size=({resamples}, N))`; the same resampled
  images for every method and every seed. In each resample, each metric is recomputed from
  predictions.csv for every run, and the difference is the mean over the seeds both methods ran
  of metric(method, seed) − metric(reference, seed). The interval is the 2.5th-97.5th percentile
  of these differences; the estimate is the same mean difference on the full test set.
- **≈**: the interval contains 0, so the difference is not told apart from the noise of the test
  images. The interval does not cover training noise between seeds: read the ± std with it.
- Accuracy, MAE and the correlations are recomputed from the predictions for the Δ; EMD, best
  val SRCC, time and memory have no Δ (no per-image values).
- **Comparable runs**: every config key must be equal except the per-run keys
  ({", ".join(PER_RUN_KEYS)}), the method's ({", ".join(METHOD_KEYS)}) and cosmetic ones
  ({", ".join(COSMETIC_KEYS)}); other differences are refused unless split with --group-by.
  Runs of one method name must also agree on the method's keys.
- **(n img)**: test images in the region; with fewer than {MIN_REGION_IMAGES} the interval
  cannot show the noise (a single image gives a zero-width interval).
"""


def group_markdown(group: GroupComparison) -> str:
    """A group's section: setup, table, notes, plots and run folders."""
    test = group.runs[0].predictions["image_id"]
    lines = [
        f"## {group.label or 'Methods'}",
        "",
        f"Data set `{group.runs[0].config['data.name']}`, {len(test)} test images, reference "
        f"`{group.reference}`.",
        "",
        markdown_table(group),
        "",
    ]
    lines += [f"- note: {note}" for note in group.notes]
    lines += ["", *(f"![{name}]({name})" for name in plot_files(group.label)), "", "Runs:", ""]
    lines += [f"- {r.method}, seed {r.seed}: `{r.path}`" for r in group.runs]
    return "\n".join(lines)


@dataclass
class ComparisonReport:
    """What ``elta compare`` wrote: the report folder, one comparison per group, the skipped
    (unfinished or failed) run folders, and the bootstrap settings."""

    out: Path
    groups: list[GroupComparison]
    skipped: list[Path]
    resamples: int
    seed: int

    @property
    def markdown(self) -> Path:
        return self.out / "report.md"

    @property
    def csv(self) -> Path:
        return self.out / "results.csv"

    def summary(self) -> str:
        """A few lines for the terminal: where the report is, and the tables."""
        lines = [f"== comparison: {self.markdown} =="]
        for group in self.groups:
            lines += [f"-- {group.label} --"] if group.label else []
            lines += [markdown_table(group), ""]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} unfinished run folder(s): see the report")
        lines.append(
            f"≈: the 95 % paired-bootstrap interval ({self.resamples} resamples, seed "
            f"{self.seed}) contains 0"
        )
        return "\n".join(lines)

    def write(self) -> None:
        """report.md, results.csv and the plots of every group into :attr:`out`."""
        self.out.mkdir(parents=True, exist_ok=True)
        for group in self.groups:
            write_plots(group, self.out)
        parts = [
            "# Comparison of methods",
            "",
            f"{sum(len(g.runs) for g in self.groups)} finished runs; bootstrap: "
            f"{self.resamples} resamples, seed {self.seed}.",
        ]
        parts += [f"- skipped ({skip_reason(p)}): `{p}`" for p in self.skipped]
        parts += ["", *(group_markdown(g) + "\n" for g in self.groups)]
        parts += [
            "## How to read this",
            "",
            procedure_text(self.groups[0].reference, self.resamples, self.seed),
        ]
        self.markdown.write_text("\n".join(parts))
        with self.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, csv_columns())
            writer.writeheader()
            for group in self.groups:
                writer.writerows(csv_rows(group))


def default_out(folders: Sequence[Path]) -> Path:
    """``<common parent>/compare-<time>``, the parent taken above the method folders
    (``runs/<dataset>/compare-<time>``), so that the usual glob ``runs/<dataset>/*/*`` does not
    match the report folder."""
    parent = Path(os.path.commonpath([str(f.parent.parent) for f in folders]))
    return parent / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"


def compare_runs(
    runs: list[str],
    *,
    reference: str = "vanilla",
    out: str | None = None,
    group_by: Sequence[str] = (),
    resamples: int = 2000,
    seed: int = 0,
) -> ComparisonReport:
    """Compare the finished runs among the folders or globs ``runs`` and write the report (see
    :mod:`elta_lightning.comparison`); return what was written. Folders without metrics.json
    (unfinished or failed runs) are skipped with a warning and a note in the report."""
    if resamples < 1:
        raise ComparisonError(f"--resamples must be at least 1, got {resamples}")
    folders = expand_run_paths(runs)
    skipped = [f for f in folders if not (f / "metrics.json").is_file()]
    for folder in skipped:
        log.warning("skipping %s: %s", folder, skip_reason(folder))
    finished = [read_run(f) for f in folders if f not in skipped]
    if not finished:
        raise ComparisonError(f"none of the {len(folders)} run folders has finished (metrics.json)")
    split = split_groups(finished, group_by)
    check_comparable(finished, group_by)
    groups = [
        compare_group(members, reference, label, resamples, seed)
        for label, members in split.items()
    ]
    report = ComparisonReport(
        Path(out) if out else default_out(folders), groups, skipped, resamples, seed
    )
    report.write()
    return report
