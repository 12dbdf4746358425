"""The plots of a group (matplotlib's object API: no pyplot state, no display needed)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from elta_lightning.comparison.group import GroupComparison
from elta_lightning.comparison.metric_rows import REGIONS, SHOTS
from elta_lightning.comparison.statistics import mean_std

#: The plots of a group, each in its own file.
PLOT_FILES = ("tail_mae.png", "per_bin_mae.png", "predicted_vs_true.png", "histograms.png")
#: The MAE keys of :func:`plot_tail_mae`: by region, by shot, and balanced.
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
    keys = [k for k in TAIL_KEYS if group.has_values(k)]
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


def plot_files(label: str) -> list[str]:
    """File names of a group's plots, as :data:`PLOT_FILES` (prefixed with the group's label
    when grouped: ``optim.lr=0.001_tail_mae.png``)."""
    prefix = re.sub(r"[^A-Za-z0-9._=-]+", "_", label.replace(", ", "+")) + "_" if label else ""
    return [prefix + name for name in PLOT_FILES]


def write_plots(group: GroupComparison, folder: Path) -> None:
    """Every plot of ``group`` into ``folder``, named by :func:`plot_files`."""
    for name, plot in zip(plot_files(group.label), PLOTTERS):
        plot(group, folder / name)
