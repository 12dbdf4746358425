"""The statistics of a comparison, pure functions over numpy arrays: mean ± std over seeds,
the metrics of weighted samples of the test images, the paired bootstrap and its percentile
interval."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from elta_lightning.comparison.metric_rows import BOOTSTRAPPED, REGIONS, SHOTS

#: Resamples drawn at a time (bounds memory at BLOCK x images per array).
BLOCK = 250


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
