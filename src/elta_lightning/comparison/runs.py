"""Finding, reading and checking the run folders of a comparison: which runs may be compared,
and how they split into groups."""

from __future__ import annotations

import csv
import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from elta_lightning.errors import EltaError
from elta_lightning.runs import read_status

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


class ComparisonError(EltaError):
    """Run folders that cannot be compared: names the folders, keys and values at fault."""


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


def skip_reason(folder: Path) -> str:
    """Why a run folder without metrics.json is left out: its status (and error) if recorded."""
    status = read_status(folder)
    if status["status"] == "failed":
        return f"failed: {status.get('error', 'no error recorded')}"
    if status["status"] == "interrupted":
        signal = status.get("signal", "a signal")
        return f"interrupted by {signal}: continue it with `elta train resume={folder}`"
    if status["status"] == "running":
        return f"unfinished (still running, or killed): `elta train resume={folder}` continues it"
    return "unfinished or failed: no metrics.json"


#: How a config key missing from a run shows among the values of the others.
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
