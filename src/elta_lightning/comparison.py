"""``elta compare``: one report over finished run folders (no W&B server needed).

Reads each run's ``config.yaml``, ``metrics.json``, ``predictions.csv`` and ``run_notes.json``
and writes one folder: ``report.md`` (the table and the plots), ``results.csv`` (one row per run,
one per method) and four PNG plots.

Why a paired bootstrap: ELTA's published gain over the next method is about 0.01 SRCC and
few-shot errors rest on a handful of images, so a table of means says nothing about which
differences are noise. Every method is tested on the same images, so the difference to the
reference is resampled over those images (the same resampled images for both methods), which
cancels the part of the noise that the two share. The procedure, exactly
(:func:`bootstrap_metrics`, :func:`paired_difference`, :func:`percentile_interval`):

1. the test images are the rows of ``predictions.csv`` sorted by ``image_id``; every run of a
   comparison must have the same images with the same true scores, else the runs are refused;
2. ``rng = numpy.random.default_rng(seed)``; resample ``r`` is row ``r`` of
   ``rng.integers(0, N, size=(resamples, N))`` (drawn in blocks of :data:`BLOCK` rows, the same
   stream), N image indices drawn with replacement, shared by every method and every seed;
3. each metric of each run is computed on each resample (an image drawn k times counts k times;
   SRCC uses average ranks of the resampled values, as ``scipy.stats.spearmanr``);
4. for method A and reference R with the seeds S that both ran, the difference in resample r is
   ``mean over s in S of [metric(A_s, r) - metric(R_s, r)]`` (pooled over seeds);
5. the 95 % interval is the 2.5th and 97.5th percentile (numpy's linear interpolation) of those
   differences over the resamples where the metric is defined; the point estimate is the same
   mean difference on the full test set. An interval that contains 0 is marked "≈".

The interval is the test-set sampling noise of the seed-averaged difference; training noise
between seeds shows in the ``± std`` columns, not in the interval.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from elta_lightning.errors import EltaError
from elta_lightning.runs import read_status

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# What is compared
# --------------------------------------------------------------------------------------------


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

#: Config keys (and every key below them) that differ between the runs of one method.
PER_RUN_KEYS = ("seed", "run_id", "runs_dir", "init_from", "logger")
#: Keys that make the method: its recipe (name, parts, part settings) and the RRT stage.
METHOD_KEYS = ("method", "stage")
#: Keys that change where or how visibly work is done, not the experiment.
COSMETIC_KEYS = (
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.eval_batch_size",
    "data.synthetic.cache_dir",
)

#: Resamples drawn at a time (bounds memory at BLOCK x images per array).
BLOCK = 250

#: A region with fewer test images gets a note: resampling a handful of images cannot show how
#: noisy their error is (one image gives a zero-width interval).
MIN_REGION_IMAGES = 10

PLOT_FILES = ("tail_mae.png", "per_bin_mae.png", "predicted_vs_true.png", "histograms.png")


class ComparisonError(EltaError):
    """Run folders that cannot be compared: names the folders, keys and values at fault."""


# --------------------------------------------------------------------------------------------
# Reading run folders
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One finished run: its folder, method, seed, flattened config, metrics, test predictions
    (sorted by image id) and per-bin training counts."""

    path: Path
    method: str
    seed: int
    config: dict[str, Any]
    metrics: dict[str, float | None]
    predictions: dict[str, np.ndarray]
    bin_counts: tuple[int, ...]


def expand_run_paths(patterns: Sequence[str]) -> list[Path]:
    """Run folders named by ``patterns`` (folders or glob patterns), sorted, without repeats.

    A glob keeps the folders it matches (files are ignored); a pattern that matches no folder, or
    a folder without ``config.yaml``, is an error."""
    folders: list[Path] = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_dir()]
        if not matches:
            raise ComparisonError(f"no run folder matched {pattern!r}")
        folders += matches
    for folder in folders:
        if not (folder / "config.yaml").is_file():
            raise ComparisonError(
                f"{folder} has no config.yaml: not a run folder (pass run folders, e.g. "
                "'runs/<dataset>/*/*')"
            )
    return sorted({f.resolve() for f in folders})


def flat_config(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"optim.lr": 0.002, ...}``; lists and empty nodes are leaves."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, name + "."))
        else:
            flat[name] = value
    return flat


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """``predictions.csv`` as arrays sorted by image id: ``image_id``, ``true``, ``predicted``,
    ``bin``, ``region``, ``shot``."""
    with path.open(newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["image_id"])
    try:
        return {
            "image_id": np.array([row["image_id"] for row in rows], dtype=str),
            "true": np.array([float(row["true_score"]) for row in rows]),
            "predicted": np.array([float(row["predicted_score"]) for row in rows]),
            "bin": np.array([int(row["bin"]) for row in rows], dtype=np.int64),
            "region": np.array([row["region"] for row in rows], dtype=str),
            "shot": np.array([row["shot"] for row in rows], dtype=str),
        }
    except (KeyError, ValueError) as error:
        raise ComparisonError(f"{path}: unreadable predictions ({error})") from error


def read_run(folder: Path) -> Run:
    """The finished run in ``folder`` (it has ``metrics.json``)."""
    for name in ("predictions.csv", "run_notes.json"):
        if not (folder / name).is_file():
            raise ComparisonError(f"{folder} has metrics.json but no {name}")
    config = flat_config(OmegaConf.to_container(OmegaConf.load(folder / "config.yaml")))
    metrics = json.loads((folder / "metrics.json").read_text())
    notes = json.loads((folder / "run_notes.json").read_text())
    return Run(
        path=folder,
        method=str(config["method.name"]),
        seed=int(config["seed"]),
        config=config,
        metrics=metrics,
        predictions=read_predictions(folder / "predictions.csv"),
        bin_counts=tuple(notes["label_stats"]["counts"]),
    )


# --------------------------------------------------------------------------------------------
# Which runs may be compared
# --------------------------------------------------------------------------------------------
_ABSENT = "<absent>"


def _ignored(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def differing_keys(configs: Sequence[dict[str, Any]], ignored: Sequence[str]) -> list[str]:
    """Sorted flat keys whose value is not the same in every config (a key missing in some
    counts as a difference), leaving out ``ignored`` keys and everything below them."""
    keys = sorted(set().union(*configs))
    return [
        key
        for key in keys
        if not _ignored(key, ignored) and len({repr(c.get(key, _ABSENT)) for c in configs}) > 1
    ]


def _describe(key: str, runs: Sequence[Run]) -> str:
    """``key: value in folder, folder; value in folder`` (at most 3 folders a value)."""
    by_value: dict[str, list[str]] = {}
    for run in runs:
        by_value.setdefault(repr(run.config.get(key, _ABSENT)), []).append(str(run.path))
    parts = []
    for value, paths in by_value.items():
        more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
        parts.append(f"{value} in {', '.join(paths[:3])}{more}")
    return f"{key}: " + "; ".join(parts)


def check_comparable(runs: Sequence[Run], group_by: Sequence[str]) -> None:
    """Refuse runs that differ in anything but method, seed, per-run and cosmetic keys (and the
    ``group_by`` keys), and runs of one method name whose method settings differ."""
    ignored = (*PER_RUN_KEYS, *METHOD_KEYS, *COSMETIC_KEYS, *group_by)
    differing = differing_keys([r.config for r in runs], ignored)
    if differing:
        details = "\n  ".join(_describe(key, runs) for key in differing)
        raise ComparisonError(
            f"the runs differ in {', '.join(differing)} (only method and seed may differ):\n  "
            f"{details}\ncompare them apart with --group-by {differing[0]}, or pass only "
            "runs of one setting"
        )
    for method in sorted({r.method for r in runs}):
        same = [r for r in runs if r.method == method]
        differing = differing_keys(
            [r.config for r in same], (*PER_RUN_KEYS, *COSMETIC_KEYS, *group_by)
        )
        if differing:
            details = "\n  ".join(_describe(key, same) for key in differing)
            raise ComparisonError(
                f"runs of method {method!r} differ in {', '.join(differing)}:\n  {details}\n"
                f"give them different method names, or --group-by {differing[0]}"
            )


def split_groups(runs: Sequence[Run], group_by: Sequence[str]) -> dict[str, list[Run]]:
    """Runs by the values of the ``group_by`` keys, labelled ``"key=value, ..."`` ("" without
    keys), in sorted order."""
    for key in group_by:
        if all(key not in r.config for r in runs):
            raise ComparisonError(f"--group-by {key}: no run has this config key")
    groups: dict[str, list[Run]] = {}
    for run in runs:
        label = ", ".join(f"{k}={run.config.get(k, _ABSENT)}" for k in group_by)
        groups.setdefault(label, []).append(run)
    return dict(sorted(groups.items()))


def check_group(runs: Sequence[Run], reference: str, label: str) -> None:
    """One run per (method, seed), the reference among the methods, and the same test images
    with the same true scores in every run."""
    where = f" (group {label})" if label else ""
    seen: dict[tuple[str, int], Path] = {}
    for run in runs:
        other = seen.setdefault((run.method, run.seed), run.path)
        if other != run.path:
            raise ComparisonError(
                f"two finished runs of method {run.method!r} with seed {run.seed}{where}: "
                f"{other} and {run.path}; pass one of them"
            )
    methods = sorted({r.method for r in runs})
    if reference not in methods:
        raise ComparisonError(
            f"reference method {reference!r} is not among the finished runs{where}: {methods}; "
            "choose one with --reference"
        )
    first = runs[0].predictions
    for run in runs[1:]:
        ids = run.predictions["image_id"]
        if not np.array_equal(ids, first["image_id"]):
            missing = len(set(ids.tolist()) ^ set(first["image_id"].tolist()))
            raise ComparisonError(
                f"{runs[0].path} and {run.path} were tested on different images "
                f"({len(first['image_id'])} vs {len(ids)}, {missing} not in both): the paired "
                "bootstrap needs the same test images in every run"
            )
        if not np.allclose(run.predictions["true"], first["true"], rtol=0.0, atol=1e-6):
            raise ComparisonError(
                f"{runs[0].path} and {run.path} have different true scores for the same test "
                "images: not the same test set"
            )


# --------------------------------------------------------------------------------------------
# Statistics (pure functions over numpy arrays)
# --------------------------------------------------------------------------------------------
def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (ddof 1) of the defined values (None and NaN left
    out), and how many there were; the std of one value is NaN (no spread to measure)."""
    defined = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if defined.size == 0:
        return math.nan, math.nan, 0
    std = float(defined.std(ddof=1)) if defined.size > 1 else math.nan
    return float(defined.mean()), std, int(defined.size)


def weighted_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, N) average ranks (1-based; tied values share the mean of their ranks) of ``values``
    (N,) in each weighted sample ``weights[b]``, where image ``i`` occurs ``weights[b, i]``
    times: the ranks ``scipy.stats.rankdata`` gives the resampled values, without building them.
    An image of weight 0 gets the rank it would have with weight 0 (it does not count)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new_value = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new_value)
    ends = np.r_[starts[1:], len(values)]
    below = np.zeros((weights.shape[0], len(values) + 1))
    np.cumsum(weights[:, order], axis=1, out=below[:, 1:])
    before, within = below[:, starts], below[:, ends] - below[:, starts]
    group_rank = before + (within + 1.0) / 2.0
    ranks = np.empty(weights.shape)
    ranks[:, order] = group_rank[:, np.cumsum(new_value) - 1]
    return ranks


def weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) Pearson correlation of ``x`` and ``y`` ((N,) or (B, N)) with ``weights`` (B, N) as
    frequencies; NaN where either side is constant."""
    total = weights.sum(axis=1, keepdims=True)
    dx = x - (weights * x).sum(axis=1, keepdims=True) / total
    dy = y - (weights * y).sum(axis=1, keepdims=True) / total
    cov = (weights * dx * dy).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.sqrt((weights * dx * dx).sum(axis=1) * (weights * dy * dy).sum(axis=1))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (an empty region)."""
    out = np.full(np.broadcast_shapes(numerator.shape, denominator.shape), np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def one_hot(labels: np.ndarray, names: Sequence[Any]) -> np.ndarray:
    """(N, G) float: ``labels[i] == names[g]``."""
    return (np.asarray(labels)[:, None] == np.asarray(names)[None, :]).astype(float)


@dataclass(frozen=True)
class EvaluationSet:
    """The test images every run of a comparison shares, sorted by image id: true scores
    (native scale), label bin, region (low/mid/high), shot (many/medium/few) of each image,
    and the data set's accuracy threshold (a score is high iff strictly above it)."""

    true: np.ndarray
    bins: np.ndarray
    regions: np.ndarray
    shots: np.ndarray
    threshold: float


def prediction_metrics(
    test: EvaluationSet, predicted: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Every :data:`BOOTSTRAPPED` metric, as (K, B) arrays, of K runs' predictions (K, N) in B
    weighted samples of the test images ``weights`` (B, N) (image i counted ``weights[b, i]``
    times; a row of ones is the test set itself). The formulas are those of
    :mod:`elta_lightning.metrics`: SRCC (average ranks), PLCC, accuracy at the threshold, MAE,
    MAE per region and shot (NaN when empty) and balanced MAE (the mean of per-bin MAE over the
    bins with images)."""
    weights = weights.astype(float)
    total = weights.sum(axis=1)
    true_ranks = weighted_ranks(test.true, weights)
    groups = {
        **{f"test/mae_{r}": one_hot(test.regions, [r])[:, 0] for r in REGIONS},
        **{f"test/mae_{s}": one_hot(test.shots, [s])[:, 0] for s in SHOTS},
    }
    bins = one_hot(test.bins, np.unique(test.bins))
    results: dict[str, list[np.ndarray]] = {key: [] for key in BOOTSTRAPPED}
    for pred in predicted:
        weighted_error = weights * np.abs(pred - test.true)
        correct = ((pred > test.threshold) == (test.true > test.threshold)).astype(float)
        values = {
            "test/srcc": weighted_pearson(true_ranks, weighted_ranks(pred, weights), weights),
            "test/plcc": weighted_pearson(test.true, pred, weights),
            "test/acc": weights @ correct / total,
            "test/mae": weighted_error.sum(axis=1) / total,
            "test/mae_balanced": np.nanmean(_ratio(weighted_error @ bins, weights @ bins), axis=1),
            **{key: _ratio(weighted_error @ m, weights @ m) for key, m in groups.items()},
        }
        for key in BOOTSTRAPPED:
            results[key].append(values[key])
    return {key: np.stack(rows) for key, rows in results.items()}


def resample_counts(
    num_images: int, resamples: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Blocks of at most :data:`BLOCK` resamples as (b, N) counts: how often each image is
    drawn in each resample, from the index matrix ``rng.integers(0, N, size=(b, N))``."""
    for start in range(0, resamples, BLOCK):
        rows = min(BLOCK, resamples - start)
        index = rng.integers(0, num_images, size=(rows, num_images))
        flat = (index + num_images * np.arange(rows)[:, None]).ravel()
        yield np.bincount(flat, minlength=rows * num_images).reshape(rows, num_images)


def bootstrap_metrics(
    test: EvaluationSet, predicted: np.ndarray, resamples: int, seed: int
) -> dict[str, np.ndarray]:
    """:func:`prediction_metrics` of K runs (K, N) in ``resamples`` bootstrap resamples of the
    test images, (K, resamples) per metric; every run sees the same resamples (paired)."""
    rng = np.random.default_rng(seed)
    blocks = [
        prediction_metrics(test, predicted, counts)
        for counts in resample_counts(len(test.true), resamples, rng)
    ]
    return {key: np.concatenate([b[key] for b in blocks], axis=1) for key in BOOTSTRAPPED}


def paired_difference(method: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Mean over seeds (axis 0) of method minus reference, seed by seed: (S, ...) -> (...)."""
    return (method - reference).mean(axis=0)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float, int]:
    """The central ``level`` percentile interval of ``samples`` where defined (NaN left out),
    with numpy's linear interpolation, and how many samples were defined."""
    defined = samples[~np.isnan(samples)]
    if defined.size == 0:
        return math.nan, math.nan, 0
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(defined, [tail, 100.0 - tail])
    return float(low), float(high), int(defined.size)


@dataclass(frozen=True)
class Difference:
    """A method minus the reference: the estimate on the full test set (mean over the paired
    seeds), its 95 % paired-bootstrap interval and the resamples where the metric was defined."""

    estimate: float
    low: float
    high: float
    defined: int

    @property
    def contains_zero(self) -> bool:
        """The interval contains 0: the difference is not told apart from test-set noise."""
        return self.low <= 0.0 <= self.high


# --------------------------------------------------------------------------------------------
# One comparison (a group of runs that differ only in method and seed)
# --------------------------------------------------------------------------------------------
@dataclass
class GroupComparison:
    """The runs of one comparison, their methods (the reference first), each method's
    differences to the reference by metric key, and notes for the reader."""

    label: str
    reference: str
    methods: list[str]
    runs: list[Run]
    differences: dict[str, dict[str, Difference]]
    notes: list[str] = field(default_factory=list)

    @property
    def plots(self) -> list[str]:
        """File names of the group's plots (prefixed with its label when grouped)."""
        prefix = _slug(self.label) + "_" if self.label else ""
        return [prefix + name for name in PLOT_FILES]

    def runs_of(self, method: str) -> list[Run]:
        return [r for r in self.runs if r.method == method]

    def values(self, method: str, key: str) -> list[float | None]:
        """``key`` of every run of ``method`` (None where undefined)."""
        return [r.metrics.get(key) for r in self.runs_of(method)]

    def region_sizes(self) -> dict[str, int]:
        """Test images of every region and shot, by metric key (``test/mae_low``: 12, ...)."""
        first = self.runs[0].predictions
        sizes = {f"test/mae_{r}": int((first["region"] == r).sum()) for r in REGIONS}
        return sizes | {f"test/mae_{s}": int((first["shot"] == s).sum()) for s in SHOTS}


def evaluation_set(runs: Sequence[Run]) -> EvaluationSet:
    """The test images the runs share (:func:`check_group` has checked that they do)."""
    from elta_lightning.datamodules import DATAMODULES  # torch-heavy: only when comparing

    name = runs[0].config["data.name"]
    if name not in DATAMODULES:
        raise ComparisonError(f"{runs[0].path}: unknown data set {name!r} (data.name)")
    first = runs[0].predictions
    return EvaluationSet(
        true=first["true"],
        bins=first["bin"],
        regions=first["region"],
        shots=first["shot"],
        threshold=DATAMODULES[name].scale.threshold,
    )


def compare_group(
    runs: Sequence[Run], reference: str, label: str, resamples: int, seed: int
) -> GroupComparison:
    """Check one group and bootstrap every method's difference to the reference, pairing runs
    of equal seed (:func:`bootstrap_metrics`, :func:`paired_difference`)."""
    check_group(runs, reference, label)
    methods = [reference, *sorted({r.method for r in runs} - {reference})]
    runs = sorted(runs, key=lambda r: (methods.index(r.method), r.seed))
    test = evaluation_set(runs)
    predicted = np.stack([r.predictions["predicted"] for r in runs])
    full = prediction_metrics(test, predicted, np.ones((1, len(test.true))))
    samples = bootstrap_metrics(test, predicted, resamples, seed)
    row = {(r.method, r.seed): k for k, r in enumerate(runs)}
    group = GroupComparison(label, reference, methods, list(runs), {})
    reference_seeds = {r.seed for r in group.runs_of(reference)}
    partial: dict[str, int] = {}
    for method in methods[1:]:
        own = {r.seed for r in group.runs_of(method)}
        seeds = sorted(own & reference_seeds)
        if own != reference_seeds:
            group.notes.append(
                f"{method}: seeds {sorted(own)}, {reference}: seeds {sorted(reference_seeds)}; "
                f"the difference pairs seeds {seeds or 'none'} only"
            )
        if not seeds:
            continue
        a, r = [row[method, s] for s in seeds], [row[reference, s] for s in seeds]
        group.differences[method] = {}
        for key in BOOTSTRAPPED:
            low, high, defined = percentile_interval(
                paired_difference(samples[key][a], samples[key][r])
            )
            estimate = float(paired_difference(full[key][a], full[key][r])[0])
            group.differences[method][key] = Difference(estimate, low, high, defined)
            if 0 < defined < resamples:
                partial.setdefault(key, defined)
    group.notes += [
        f"{key}: defined in {defined} of {resamples} resamples (the others drew no image of "
        "the region); its intervals use those"
        for key, defined in partial.items()
    ]
    group.notes += [
        f"{key}: {size} test image(s), too few for the interval to show the noise; do not read "
        "its difference as a finding"
        for key, size in group.region_sizes().items()
        if 0 < size < MIN_REGION_IMAGES
    ]
    return group


# --------------------------------------------------------------------------------------------
# Table and CSV
# --------------------------------------------------------------------------------------------
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
    return [
        row
        for row in METRIC_ROWS
        if any(mean_std(group.values(m, row.key))[2] for m in group.methods)
    ]


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


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot state, no display needed)
# --------------------------------------------------------------------------------------------
TAIL_KEYS = tuple(f"test/mae_{name}" for name in (*REGIONS, *SHOTS, "balanced"))


def _colour(group: GroupComparison, method: str) -> str:
    return f"C{group.methods.index(method) % 10}"


def _panels(count: int) -> tuple[Figure, list[Any]]:
    """A figure with one square panel per method, at most 4 a row."""
    cols = min(count, 4)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(3.6 * cols, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, list(axes[:count])


def plot_tail_mae(group: GroupComparison, path: Path) -> None:
    """Bars of MAE per tail region by method: mean over seeds, error bars the std over seeds."""
    keys = [k for k in TAIL_KEYS if any(mean_std(group.values(m, k))[2] for m in group.methods)]
    size = min(16.0, 3.0 + len(keys) * (0.3 + 0.25 * len(group.methods)))
    figure = Figure(figsize=(size, 4.0), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / len(group.methods)
    for i, method in enumerate(group.methods):
        summaries = [mean_std(group.values(method, k)) for k in keys]
        heights = [mean for mean, _, _ in summaries]
        errors = [0.0 if math.isnan(std) else std for _, std, _ in summaries]
        x = np.arange(len(keys)) + (i - (len(group.methods) - 1) / 2) * width
        colour = _colour(group, method)
        axes.bar(x, heights, width, yerr=errors, capsize=3, color=colour, label=method)
    axes.set_xticks(np.arange(len(keys)), [k.removeprefix("test/mae_") for k in keys])
    axes.set_ylabel("MAE (native scale)")
    axes.set_title("MAE by region (mean ± std over seeds)")
    axes.legend()
    figure.savefig(path, dpi=100)


def plot_per_bin_mae(group: GroupComparison, path: Path) -> None:
    """Per-bin MAE (all seeds pooled) against the training count of the bin: the long tail."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axes = figure.subplots()
    first = group.runs[0].predictions
    bins = np.unique(first["bin"])
    counts = np.asarray(group.runs[0].bin_counts)[bins]
    for method in group.methods:
        errors = np.concatenate(
            [
                np.abs(r.predictions["predicted"] - r.predictions["true"])
                for r in group.runs_of(method)
            ]
        )
        labels = np.tile(first["bin"], len(group.runs_of(method)))
        mae = [errors[labels == b].mean() for b in bins]
        axes.scatter(counts, mae, s=18, alpha=0.7, color=_colour(group, method), label=method)
    axes.set_xscale("symlog", linthresh=1.0)
    axes.set_xlabel("training images in the bin (label bins of the common 0..10 scale)")
    axes.set_ylabel("MAE of the bin's test images")
    axes.set_title("per-bin MAE against training count")
    axes.legend()
    figure.savefig(path, dpi=100)


def plot_predicted_vs_true(group: GroupComparison, path: Path) -> None:
    """Predicted against true score, one panel per method, all seeds pooled."""
    figure, panels = _panels(len(group.methods))
    true = group.runs[0].predictions["true"]
    low, high = true.min(), true.max()
    for axes, method in zip(panels, group.methods):
        for run in group.runs_of(method):
            axes.scatter(
                true, run.predictions["predicted"], s=6, alpha=0.4, color=_colour(group, method)
            )
        axes.plot([low, high], [low, high], color="black", linewidth=1)
        axes.set_title(method)
        axes.set_xlabel("true score")
        axes.set_ylabel("predicted score")
    figure.savefig(path, dpi=100)


def plot_histograms(group: GroupComparison, path: Path) -> None:
    """Histograms of the predictions (all seeds pooled) over the labels, one panel per method:
    a model that regresses to the mean shows a narrow peak inside a wide label histogram."""
    figure, panels = _panels(len(group.methods))
    true = group.runs[0].predictions["true"]
    every = np.concatenate([true, *(r.predictions["predicted"] for r in group.runs)])
    edges = np.linspace(every.min(), every.max(), 31)
    for axes, method in zip(panels, group.methods):
        predicted = np.concatenate([r.predictions["predicted"] for r in group.runs_of(method)])
        axes.hist(true, edges, density=True, color="grey", alpha=0.5, label="labels")
        axes.hist(
            predicted,
            edges,
            density=True,
            color=_colour(group, method),
            alpha=0.6,
            label="predicted",
        )
        axes.set_title(method)
        axes.set_xlabel("score")
        axes.legend()
    figure.savefig(path, dpi=100)


#: The plot functions, in the order of :data:`PLOT_FILES`.
PLOTTERS = (plot_tail_mae, plot_per_bin_mae, plot_predicted_vs_true, plot_histograms)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
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
    lines += ["", *(f"![{name}]({name})" for name in group.plots), "", "Runs:", ""]
    lines += [f"- {r.method}, seed {r.seed}: `{r.path}`" for r in group.runs]
    return "\n".join(lines)


def skip_reason(folder: Path) -> str:
    """Why a run folder without metrics.json is left out: its status (and error) if recorded."""
    status = read_status(folder)
    if status["status"] == "failed":
        return f"failed: {status.get('error', 'no error recorded')}"
    if status["status"] == "running":
        return "unfinished (still running, or killed)"
    return "unfinished or failed: no metrics.json"


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
            for name, plot in zip(group.plots, PLOTTERS):
                plot(group, self.out / name)
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


def _slug(label: str) -> str:
    """A file-name prefix from a group label: ``optim.lr=0.001``."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label.replace(", ", "+"))


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
    the module docstring); return what was written. Folders without metrics.json (unfinished
    or failed runs) are skipped with a warning and a note in the report."""
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
