"""One comparison: a group of runs that differ only in method and seed, and every method's
paired-bootstrap difference to the reference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from elta_lightning.comparison.metric_rows import BOOTSTRAPPED, REGIONS, SHOTS
from elta_lightning.comparison.runs import ComparisonError, Run, check_group
from elta_lightning.comparison.statistics import (
    Difference,
    EvaluationSet,
    bootstrap_metrics,
    mean_std,
    paired_difference,
    percentile_interval,
    prediction_metrics,
)

#: A region with fewer test images gets a note: resampling a handful of images cannot show how
#: noisy their error is (one image gives a zero-width interval).
MIN_REGION_IMAGES = 10


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

    def runs_of(self, method: str) -> list[Run]:
        return [r for r in self.runs if r.method == method]

    def values(self, method: str, key: str) -> list[float | None]:
        """``key`` of every run of ``method`` (None where undefined)."""
        return [r.metrics.get(key) for r in self.runs_of(method)]

    def has_values(self, key: str) -> bool:
        """Some run has a value of ``key`` (EMD only with distributions, ...)."""
        return any(mean_std(self.values(m, key))[2] for m in self.methods)

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
