"""``elta self-train``: ELTA's APDS self-training round as one command.

1. Round 1: train as ``elta train`` does, or take a trained checkpoint (``init_from=``, then
   evaluated on the test split for the report).
2. Predict the unlabeled images (``method.apds.unlabeled``: a folder, or a text file listing
   image paths; on the built-in data set by default its generated unlabeled split), sharpen and
   select with APDS (:class:`~elta_lightning.callbacks.PseudoLabelSelector`): no ground truth is
   used.
3. Write ``pseudo_labels.csv`` (the kept images: ``image`` relative to the unlabeled folder,
   ``score`` native, ``score_common``, ``confidence`` = largest sharpened probability, and the
   stored distribution ``p_<level>``: unsharpened by default as ELTA 1.0, sharpened with
   ``method.apds.store=sharpened`` as ELTA 2.0) and ``pseudo_labels.json`` (provenance: source
   checkpoint, beta, threshold, counts kept / total, per score region by the training cuts),
   each atomically (temporary file, then ``os.replace``).
4. Round 2: train again from scratch (as the authors) on the labelled rows plus the
   pseudo-labelled rows READ BACK from ``pseudo_labels.csv``; validation, test and region cuts
   use ground truth only.
5. Report both rounds side by side (printed table, ``selftrain.json``).

Run folder ``runs/<dataset>/<method>/<run id>/``: ``round1/`` (a training run folder; absent with
``init_from``), ``pseudo_labels.csv``, ``pseudo_labels.json``, ``round2/``, ``selftrain.json``.

Under DDP every process runs this flow with the same run folder: each predicts its own share of
the unlabeled images (every image once over all processes), the gathered logits give every
process the same selection, rank 0 alone writes the files, and after a barrier every process
reads ``pseudo_labels.csv``, so round 2 trains on the rows of the file on every process.

Documented behaviour for bad input: a model without the distribution head, or an unknown
unlabeled source, fails before any training. Unreadable unlabeled images are all listed in one
error after prediction, or, with ``skip_unreadable``, left out and counted. An EMPTY selection
writes the (empty) pseudo-label file, its provenance and ``selftrain.json``, skips round 2 and
raises :class:`EmptySelectionError` (exit code 1): training round 2 on the labelled data alone
would only repeat round 1. ``method.apds.oracle=true`` chooses beta and threshold from the
authors' grid with the TRUE labels of the unlabeled set (only the built-in split has them); the
provenance and the printed report then say that labels were used.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from elta_lightning.callbacks import PseudoLabelSelection, PseudoLabelSelector
from elta_lightning.checkpoints import load_checkpoint
from elta_lightning.compare import markdown_table
from elta_lightning.datamodules import build_datamodule
from elta_lightning.datamodules.ava import read_ava_csv
from elta_lightning.datamodules.labels import LabelTable
from elta_lightning.datamodules.synthetic import ensure_unlabeled
from elta_lightning.datamodules.unlabeled import (
    IMAGE_SUFFIXES,
    list_images,
    predict_unlabeled,
    unreadable_report,
)
from elta_lightning.distributed import per_process_eval_batch
from elta_lightning.errors import EltaError
from elta_lightning.metrics import region_masks
from elta_lightning.models.module import IAAModule, resolve_head
from elta_lightning.run import build_trainer, evaluate, model_scale, train
from elta_lightning.runs import run_dir_for
from elta_lightning.scales import ScoreScale

log = logging.getLogger(__name__)

#: The authors' grid for the oracle analysis, and the fewest kept pseudo-labels it accepts.
ORACLE_BETAS = (1.0, 1.1, 1.2, 1.25)
ORACLE_THRESHOLDS = (0.70, 0.75, 0.80, 0.85, 0.90)
ORACLE_MIN_KEPT = 10

PSEUDO_LABELS_CSV = "pseudo_labels.csv"
PROVENANCE_JSON = "pseudo_labels.json"
REPORT_JSON = "selftrain.json"
REGIONS = ("low", "mid", "high")


class SelfTrainError(EltaError, RuntimeError):
    """Self-training cannot go on: the message says why and what to change."""


class EmptySelectionError(SelfTrainError):
    """No unlabeled image passed the APDS threshold: round 2 was skipped."""


# ----- the unlabeled images -------------------------------------------------------------------
@dataclass(frozen=True)
class UnlabeledSet:
    """Images to pseudo-label: paths ``files`` relative to ``root``; ``labels`` (rows aligned
    with ``files``) only where the set has hidden ground truth (oracle analysis)."""

    root: Path
    files: list[str]
    description: str
    labels: LabelTable | None = None


def resolve_unlabeled(cfg: DictConfig) -> UnlabeledSet:
    """The unlabeled set ``method.apds.unlabeled`` names (folder or file list), or the built-in
    data set's generated unlabeled split when it is null."""
    source = cfg.method.apds.unlabeled
    if source is None:
        if cfg.data.name != "synthetic":
            raise SelfTrainError(
                "method.apds.unlabeled is not set: give a folder of unlabeled images or a text "
                "file listing image paths (only the built-in data set has its own)"
            )
        try:
            folder = ensure_unlabeled(cfg.data.synthetic)
        except ValueError as error:
            raise SelfTrainError(str(error)) from error
        labels = read_ava_csv(folder / "hidden_labels.csv")
        described = f"built-in unlabeled split ({len(labels)} images, {folder / 'images'})"
        return UnlabeledSet(folder / "images", labels.image_ids, described, labels)
    path = Path(source).expanduser()
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise SelfTrainError(
                f"method.apds.unlabeled={source}: no image files ({sorted(IMAGE_SUFFIXES)}) there"
            )
        return UnlabeledSet(path, files, f"folder {path} ({len(files)} images)")
    if path.is_file():
        return _read_file_list(path)
    raise SelfTrainError(f"method.apds.unlabeled={source}: no such folder or file")


def _read_file_list(path: Path) -> UnlabeledSet:
    """A text file of image paths, one a line (``#`` comments and blank lines ignored); relative
    paths are relative to the file's folder."""
    listed = []
    for line in path.read_text().splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            image = Path(entry).expanduser()
            listed.append(image if image.is_absolute() else path.parent / image)
    if not listed:
        raise SelfTrainError(f"method.apds.unlabeled={path}: the file lists no image")
    root = Path(os.path.commonpath([str(p.resolve().parent) for p in listed]))
    files = [p.resolve().relative_to(root).as_posix() for p in listed]
    if len(set(files)) != len(files):
        raise SelfTrainError(f"method.apds.unlabeled={path}: an image is listed twice")
    return UnlabeledSet(root, files, f"file list {path} ({len(files)} images)")


def prediction_batch(cfg: DictConfig, world_size: int) -> int:
    """Each process's batch for predicting the unlabeled set: the global evaluation batch
    (``data.eval_batch_size``, null: twice ``data.batch_size``) split over ``world_size``
    processes, as the evaluation loaders split it."""
    global_batch = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    return per_process_eval_batch(global_batch, world_size)


def _require_distribution(head: str, what: str) -> None:
    if head != "distribution":
        raise SelfTrainError(
            f"APDS needs the distribution head (vote distributions), but {what} has the {head} "
            "head: self-training works on data sets with rating levels (AVA, PARA, built-in) "
            "with model.head=auto or distribution"
        )


# ----- oracle analysis (uses labels) ----------------------------------------------------------
@dataclass
class OracleChoice:
    """The grid pair with the smallest MAE of the kept pseudo-labels (common scale) among those
    keeping at least ``ORACLE_MIN_KEPT``; ``None`` fields when no pair qualified."""

    beta: float | None
    threshold: float | None
    mae: float | None
    grid: list[dict[str, float]] = field(default_factory=list)


def oracle_search(
    selection: PseudoLabelSelection, true_common: torch.Tensor, store: str
) -> OracleChoice:
    """Grid-search beta x threshold against TRUE scores (common scale, aligned with
    ``selection.index``): the paper's analysis, which a real self-training run cannot do."""
    best = OracleChoice(None, None, None)
    for beta in ORACLE_BETAS:
        for threshold in ORACLE_THRESHOLDS:
            trial = selection.with_params(beta, threshold)
            kept = trial.selected
            count = int(kept.sum())
            stored_scores = trial.stored(store)[kept] @ trial.levels
            mae = float((stored_scores - true_common[kept]).abs().mean()) if count else math.nan
            best.grid.append({"beta": beta, "threshold": threshold, "kept": count, "mae": mae})
            if count >= ORACLE_MIN_KEPT and (best.mae is None or mae < best.mae):
                best.beta, best.threshold, best.mae = beta, threshold, mae
    return best


# ----- the pseudo-label file ------------------------------------------------------------------
def pseudo_label_table(
    selection: PseudoLabelSelection, unlabeled: UnlabeledSet, store: str, scale: ScoreScale
) -> LabelTable:
    """The kept images as training rows: stored distributions and their mean (native scale)."""
    kept = selection.selected
    rows = selection.index[kept].tolist()
    dists = selection.stored(store)[kept].double().numpy()
    levels = np.asarray(scale.levels, dtype=np.float64)
    return LabelTable(
        image_ids=[unlabeled.files[r] for r in rows],
        scores=dists @ levels,
        distributions=dists,
        sources=[f"pseudo-label of {unlabeled.files[r]}" for r in rows],
    )


def region_counts(
    selection: PseudoLabelSelection, scale: ScoreScale, cuts: tuple[float, float]
) -> dict[str, dict[str, int]]:
    """Kept / total images per region of their predicted score (training-set cuts)."""
    masks = region_masks(selection.scores / scale.to_common, tuple(cuts))
    return {
        region: {"selected": int((mask & selection.selected).sum()), "total": int(mask.sum())}
        for region, mask in zip(REGIONS, masks)
    }


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside ``path``, then rename it: readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _level_columns(scale: ScoreScale) -> list[str]:
    """The distribution columns of ``pseudo_labels.csv``: ``p_<level>`` per rating level."""
    return [f"p_{level:g}" for level in scale.levels]


@rank_zero_only
def write_pseudo_labels(
    run_dir: Path,
    table: LabelTable,
    confidence: torch.Tensor,
    scale: ScoreScale,
    provenance: dict[str, Any],
) -> None:
    """``pseudo_labels.csv`` and ``pseudo_labels.json`` in ``run_dir``, each atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "score", "score_common", "confidence", *_level_columns(scale)])
    for k, image in enumerate(table.image_ids):
        score = float(table.scores[k])
        values = [score, score * scale.to_common, float(confidence[k]), *table.distributions[k]]
        writer.writerow([image, *(f"{v:.6f}" for v in values)])
    _write_atomically(run_dir / PSEUDO_LABELS_CSV, buffer.getvalue())
    _write_atomically(run_dir / PROVENANCE_JSON, json.dumps(provenance, indent=2) + "\n")


def read_pseudo_labels(path: Path, scale: ScoreScale) -> LabelTable:
    """The training rows of a ``pseudo_labels.csv``: images, stored distributions (renormalised,
    as the file rounds them to 6 decimals) and their means on the native scale. Round 2 trains on
    these rows, so on every process it trains on exactly what the file records."""
    columns = _level_columns(scale)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("image", *columns) if c not in (reader.fieldnames or [])]
        if missing:
            raise SelfTrainError(f"{path}: not a pseudo-label file of this scale: no {missing}")
        rows = list(reader)
    dists = np.array([[float(r[c]) for c in columns] for r in rows], dtype=np.float64)
    dists = dists.reshape(len(rows), len(columns))
    dists /= dists.sum(axis=1, keepdims=True)
    return LabelTable(
        image_ids=[r["image"] for r in rows],
        scores=dists @ np.asarray(scale.levels, dtype=np.float64),
        distributions=dists,
        sources=[f"{path}, line {line}" for line in range(2, len(rows) + 2)],
    )


@dataclass(frozen=True)
class PseudoLabels:
    """Steps 2 and 3 as one process ends them: ``table`` the rows round 2 trains on (read back
    from ``pseudo_labels.csv``), ``provenance`` as written beside it, and the ``selection``
    (the same on every process) they come from."""

    table: LabelTable
    provenance: dict[str, Any]
    selection: PseudoLabelSelection


def make_pseudo_labels(
    cfg: DictConfig,
    module: IAAModule,
    checkpoint: Path,
    unlabeled: UnlabeledSet,
    run_dir: Path,
    skip_unreadable: bool = False,
) -> PseudoLabels:
    """Predict ``unlabeled`` with ``module`` (``checkpoint``'s model), select with APDS, write
    the pseudo-label files into ``run_dir`` and read them back, on every process of the run.

    Under DDP each process predicts its share (every image once over all processes) and the
    gathered logits give every process the same selection; rank 0 alone writes the files and
    then broadcasts whether that worked, which keeps the other processes from reading
    ``pseudo_labels.csv`` before it is there and ends all of them when the write failed."""
    apds = cfg.method.apds
    selector = PseudoLabelSelector(apds.beta, apds.threshold)
    trainer = build_trainer(cfg, run_dir, None, [selector])
    batch = prediction_batch(cfg, trainer.world_size)
    predict_unlabeled(trainer, module, unlabeled.root, unlabeled.files, batch, cfg.data.num_workers)
    if selector.selection is None:
        raise SelfTrainError("the prediction of the unlabeled set ended without a selection")
    scale, cuts = module.scale, module.label_stats.cuts
    selection, oracle = _final_selection(cfg, selector.selection, unlabeled, scale, skip_unreadable)
    table = pseudo_label_table(selection, unlabeled, apds.store, scale)
    provenance = _provenance(cfg, checkpoint, unlabeled, selection, scale, cuts, oracle)
    failure = None
    if trainer.is_global_zero:
        try:
            confidence = selection.confidence[selection.selected]
            write_pseudo_labels(run_dir, table, confidence, scale, provenance)
        except OSError as error:
            failure = f"{type(error).__name__}: {error}"
    failure = trainer.strategy.broadcast(failure)  # also the barrier before the files are read
    if failure is not None:
        raise SelfTrainError(f"could not write the pseudo-label files into {run_dir}: {failure}")
    rows = read_pseudo_labels(run_dir / PSEUDO_LABELS_CSV, scale)
    return PseudoLabels(rows, provenance, selection)


def _final_selection(
    cfg: DictConfig,
    selection: PseudoLabelSelection,
    unlabeled: UnlabeledSet,
    scale: ScoreScale,
    skip_unreadable: bool,
) -> tuple[PseudoLabelSelection, OracleChoice | None]:
    """The selection to write: unreadable images named in an error (or, ``skip_unreadable``,
    left out), and with ``method.apds.oracle`` re-selected with the pair the TRUE labels choose
    (returned too, for the provenance)."""
    unreadable = selection.unreadable.tolist()
    if unreadable and not skip_unreadable:
        raise SelfTrainError(
            f"{len(unreadable)} unreadable image(s) in the unlabeled set: "
            f"{unreadable_report(unlabeled.root, unlabeled.files, unreadable)}. Fix or remove "
            "them, or pass --skip-unreadable to leave them out (counted in the provenance)"
        )
    if not cfg.method.apds.oracle:
        return selection, None
    true_scores = unlabeled.labels.scores[selection.index.numpy()] * scale.to_common
    oracle = oracle_search(selection, torch.as_tensor(true_scores).float(), cfg.method.apds.store)
    if oracle.beta is not None:
        selection = selection.with_params(oracle.beta, oracle.threshold)
    return selection, oracle


# ----- the flow -------------------------------------------------------------------------------
@dataclass
class SelfTrainResult:
    """Where the run is, its report table, and whether the oracle (labels) chose the pair."""

    run_dir: Path
    table: str
    report: dict[str, Any]
    labels_used: bool


def self_train(cfg: DictConfig, skip_unreadable: bool = False) -> SelfTrainResult:
    """Round 1 (or ``init_from``), APDS pseudo-labels, round 2, report; see the module doc."""
    if cfg.stage != "train":
        raise SelfTrainError(
            f"self-train runs training rounds (stage=train), got stage={cfg.stage}; for RRT "
            "use elta train stage=rrt"
        )
    apds = cfg.method.apds
    try:
        head = resolve_head(cfg.model.head, model_scale(build_datamodule(cfg.data)))
    except ValueError as error:  # model.head=distribution on data without vote distributions
        raise SelfTrainError(str(error)) from error
    _require_distribution(head, "this configuration")
    unlabeled = resolve_unlabeled(cfg)
    if apds.oracle and unlabeled.labels is None:
        raise SelfTrainError(
            "method.apds.oracle=true needs the true labels of the unlabeled set; only the "
            "built-in data set's unlabeled split has them (method.apds.unlabeled=null)"
        )
    run_dir = run_dir_for(cfg)
    round_cfg = OmegaConf.merge(cfg, {"init_from": None})  # round 2 starts from scratch
    module, checkpoint, round1 = _first_round(cfg, round_cfg, run_dir)

    pseudo = make_pseudo_labels(cfg, module, checkpoint, unlabeled, run_dir, skip_unreadable)
    selection, table, provenance = pseudo.selection, pseudo.table, pseudo.provenance
    counts = provenance["counts"]
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "round1": round1,
        "pseudo_labels": {
            "file": str(run_dir / PSEUDO_LABELS_CSV),
            "provenance": str(run_dir / PROVENANCE_JSON),
            "selected": counts["selected"],
            "total": counts["total"],
            "labels_used": provenance["labels_used"],
        },
        "round2": None,
    }
    if len(table) == 0:
        message = (
            f"no pseudo-label kept: 0 of {counts['total']} unlabeled images passed APDS "
            f"(beta {selection.beta}, threshold {selection.threshold}; the largest sharpened "
            f"probability was {float(selection.confidence.max()):.3f}); round 2 skipped. Lower "
            "method.apds.threshold or raise method.apds.beta"
        )
        report["round2_skipped"] = message
        _write_report(run_dir, report)
        raise EmptySelectionError(f"{message}. Files in {run_dir}")

    data = build_datamodule(cfg.data)
    data.add_training_rows(table, unlabeled.root)
    result = train(round_cfg, run_dir=run_dir / "round2", datamodule=data)
    report["round2"] = {
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.run_dir / "checkpoints" / "best.ckpt"),
        "metrics": result.metrics,
        "train_rows": {"labeled": len(data.tables["train"]), "pseudo": len(table)},
    }
    columns = {"round 1": round1["metrics"], "round 2 (+ pseudo-labels)": result.metrics}
    report["table"] = markdown_table(columns, change=True)
    _write_report(run_dir, report)
    return SelfTrainResult(run_dir, report["table"], report, provenance["labels_used"])


@rank_zero_only
def write_self_train_summary(result: SelfTrainResult) -> None:
    """The end-of-run report (rank 0 only): the oracle note where labels chose the pair, the
    pseudo-labels kept and both rounds side by side."""
    if result.labels_used:
        print(
            "NOTE: ORACLE analysis: beta/threshold were chosen with the TRUE labels of "
            "the unlabeled set (method.apds.oracle=true); not a valid self-training run"
        )
    kept = result.report["pseudo_labels"]
    print(f"== self-training: {result.run_dir} ==")
    print(f"pseudo-labels: {kept['selected']} of {kept['total']} kept -> {kept['file']}")
    print(result.table)


def _first_round(
    cfg: DictConfig, round_cfg: DictConfig, run_dir: Path
) -> tuple[IAAModule, Path, dict[str, Any]]:
    """The round-1 model, its checkpoint and its report entry: trained into ``round1/``, or the
    ``init_from`` checkpoint tested on the test split."""
    if cfg.init_from:
        checkpoint = Path(cfg.init_from)
        module = load_checkpoint(checkpoint)
        _require_distribution(module.head_kind, f"the model of {checkpoint}")
        log.info("round 1: the trained model %s (init_from), tested for the report", checkpoint)
        metrics = evaluate(module, cfg, run_dir)
        return (
            module,
            checkpoint,
            {"run_dir": None, "checkpoint": str(checkpoint), "metrics": metrics},
        )
    result = train(round_cfg, run_dir=run_dir / "round1")
    checkpoint = result.run_dir / "checkpoints" / "best.ckpt"
    entry = {
        "run_dir": str(result.run_dir),
        "checkpoint": str(checkpoint),
        "metrics": result.metrics,
    }
    return load_checkpoint(checkpoint), checkpoint, entry


def _provenance(
    cfg: DictConfig,
    checkpoint: Path,
    unlabeled: UnlabeledSet,
    selection: PseudoLabelSelection,
    scale: ScoreScale,
    cuts: tuple[float, float],
    oracle: OracleChoice | None,
) -> dict[str, Any]:
    labels_used = oracle is not None
    if not labels_used:
        how = "APDS confidence filter on the model's own predictions; no ground truth used"
    elif oracle.beta is None:
        how = (
            f"ORACLE requested (labels of the unlabeled set were used): no grid pair kept "
            f"{ORACLE_MIN_KEPT} or more, so the configured beta and threshold were kept"
        )
    else:
        how = (
            "ORACLE: beta and threshold chosen with the TRUE labels of the unlabeled set (MAE of "
            f"the kept pseudo-labels, >= {ORACLE_MIN_KEPT} kept): not a valid self-training result"
        )
    provenance: dict[str, Any] = {
        "file": PSEUDO_LABELS_CSV,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_checkpoint": str(checkpoint),
        "unlabeled": unlabeled.description,
        "selection": how,
        "labels_used": labels_used,
        "beta": selection.beta,
        "threshold": selection.threshold,
        "store": cfg.method.apds.store,
        "score_scale": "beta and scores on the common 0..10 scale; file scores native + common",
        "region_cuts": list(cuts),
        "counts": {
            "selected": int(selection.selected.sum()),
            "total": int(selection.selected.numel()),
            "unreadable_skipped": int(selection.unreadable.numel()),
            "regions": region_counts(selection, scale, cuts),
        },
    }
    if oracle is not None:
        provenance["oracle"] = {"chosen_mae": oracle.mae, "grid": oracle.grid}
    return provenance


@rank_zero_only
def _write_report(run_dir: Path, report: dict[str, Any]) -> None:
    _write_atomically(run_dir / REPORT_JSON, json.dumps(report, indent=2, sort_keys=True) + "\n")
