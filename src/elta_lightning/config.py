"""Structured run configuration: dataclass schema, YAML composition, dotted overrides, checks.

A run's config is merged in a fixed order: the schema's defaults, ``datamodules/<dataset>.yaml``,
``experiments/<method>.yaml``, then ``key=value`` overrides. Unknown keys and wrong types fail at
start-up with the key's full path (OmegaConf adds a "Did you mean" suggestion).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from elta_lightning.distributed import per_process_batch, world_size_of
from elta_lightning.errors import ConfigError
from elta_lightning.label_stats import LabelStatsError, check_binning
from elta_lightning.parts import (
    PARTS,
    BalancedMSEConfig,
    CMixupConfig,
    ConRConfig,
    FDSConfig,
    FLSAConfig,
    FocalRConfig,
    InvConfig,
    LDSConfig,
    RankSimConfig,
    SqinvConfig,
    TFAConfig,
    check_parts,
    part_config,
)


@dataclass
class TransformConfig:
    """Image sizes of the train and eval pipelines (authors: resize 300, crop 256, eval 256)."""

    train_resize: int = 300
    crop: int = 256
    eval_resize: int = 256
    hflip: bool = True
    # normalisation; null: the backbone's own (timm's pretrained config, ImageNet for most)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class SyntheticConfig:
    """The built-in long-tailed data set, generated on first use (see datamodules/synthetic.py)."""

    num_train: int = 1600
    num_val: int = 400
    num_test: int = 500
    image_size: int = 80
    votes_min: int = 80
    votes_max: int = 240
    cue_noise: float = 0.6
    seed: int = 0
    cache_dir: str = ".cache/elta-synthetic"
    # images without labels for `elta self-train` (generated on first use, beside the data set)
    num_unlabeled: int = 800


@dataclass
class AVAConfig:
    """AVA options; paths are relative to the label folder (``data.labels_dir``) or absolute."""

    test_list: str = "aesthetics_image_lists/generic_test.jpgl"  # native layout: official test ids
    tags: str | None = "tags.txt"  # tag id -> name file, read when present; null: names not loaded
    challenges: str | None = "challenges.txt"  # challenge id -> name file, read when present


@dataclass
class AADBConfig:
    """AADB options."""

    # attribute lists to load into the labels' extras (native layout only), by file name:
    # BalacingElements (sic), ColorHarmony, Content, DoF, Light, MotionBlur, Object, Repetition,
    # RuleOfThirds, Symmetry, VividColor; values in [-1, 1]
    attributes: list[str] = field(default_factory=list)


@dataclass
class TAD66KConfig:
    """TAD66K options."""

    themes: str | None = "unmerge"  # folder of per-theme CSVs (theme of each image); null: none


@dataclass
class PARAConfig:
    """PARA options."""

    # GIAA columns (native layout) kept in the labels' extras besides ``semantic``,
    # e.g. [qualityScore_mean, compositionScore_mean]
    extra_columns: list[str] = field(default_factory=list)


@dataclass
class LabelStatsConfig:
    """How the training labels are binned for the long-tail parts and the few-shot metrics:
    bins of ``bin_width`` on the common 0..10 scale; a bin is many-shot when it holds at least
    ``many_share`` of the training images and few-shot below ``few_share`` (the DIR protocol's
    100 / 20 images, as shares, so one default suits data sets of any size)."""

    bin_width: float = 0.1
    many_share: float = 0.02
    few_share: float = 0.005


@dataclass
class DataConfig:
    """Which data set, where it lives, and how it is loaded."""

    name: str = "synthetic"
    root: str | None = None
    layout: Literal["auto", "native", "elta_csv"] = "auto"  # label file layout; auto: detect
    labels_dir: str | None = None  # folder of the label files (relative to root); null: detect
    image_dir: str | None = None  # folder the image ids are relative to; null: detect under root
    val_split: Literal["standard", "carve"] = "standard"  # carve: val from train, ignore val file
    prepared: str | None = None  # folder written by `elta prepare`: reuse its checks and images
    # the GLOBAL training batch, split evenly over trainer.devices x trainer.num_nodes processes
    # (distributed.py): the same optimiser steps and learning rate on any number of GPUs
    batch_size: int = 48
    eval_batch_size: int | None = None  # global too; null: twice batch_size (no gradients kept)
    # loader processes per device; null: chosen from the machine's cores (datamodules/base.py,
    # loader_settings: accelerators get cores per device - 1, CPU runs none below 8 cores)
    num_workers: int | None = None
    val_fraction: float = 0.05
    split_seed: int = 0
    skip_missing_images: bool = False
    # where JPEGs are decoded: cpu (loader workers) or gpu (batched nvjpeg on the device, for
    # machines with few cores per GPU; needs CUDA; datamodules/gpu_decode.py)
    decode: Literal["cpu", "gpu"] = "cpu"
    transforms: TransformConfig = field(default_factory=TransformConfig)
    label_stats: LabelStatsConfig = field(default_factory=LabelStatsConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    ava: AVAConfig = field(default_factory=AVAConfig)  # dataset=ava only
    aadb: AADBConfig = field(default_factory=AADBConfig)  # dataset=aadb only
    tad66k: TAD66KConfig = field(default_factory=TAD66KConfig)  # dataset=tad66k only
    para: PARAConfig = field(default_factory=PARAConfig)  # dataset=para only


@dataclass
class ModelConfig:
    """Backbone (any timm name) and head.

    ``pretrained``: ``none`` (random init), ``hub`` (timm's default weights, needs network) or the
    path of a local ``.pth`` / ``.safetensors`` file. ``head``: ``auto`` picks the distribution
    head where the data has vote distributions and the score head otherwise.
    """

    backbone: str = "swinv2_base_window8_256"
    pretrained: str = "none"
    head: Literal["auto", "distribution", "score"] = "auto"
    hidden_dim: int = 64
    score_dropout: float = 0.75
    # the score head's target: ``range`` = the score normalised over the data set's range to
    # [0, 1] (one learning rate suits every data set); ``over10`` = the common-scale score / 10,
    # the ELTA authors' form (AVA 1..10 -> 0.1..1.0)
    score_target: Literal["range", "over10"] = "range"
    drop_path_rate: float = 0.0
    # speed: channels_last memory format (null: for convolutional backbones on CUDA), activation
    # checkpointing inside the backbone (timm's set_grad_checkpointing: less memory, ~30 % more
    # compute), torch.compile of the backbone with this backend (inductor compiles for minutes
    # on a small CPU; aot_eager checks the graph capture without compiling kernels)
    channels_last: bool | None = None
    grad_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"


@dataclass
class LossConfig:
    """The task loss. ``emd``: the form of the EMD (r = 2) that trains the distribution head.

    - ``per_sample``: NIMA's definition, the mean over the batch of each sample's
      ``EMD_2 = sqrt(mean over bins of (CDF_pred - CDF_true)^2)`` (ELTA 2.0's fix).
    - ``batch_rms``: the ELTA 1.0 code's form, ONE root-mean-square over the whole batch and all
      bins, ``sqrt(mean over samples and bins of (...)^2)``; the ELTA paper's published numbers
      were produced by that code, so this is the form to reproduce them. Its gradient weights
      each sample by its own EMD over the batch's RMS (hard samples count more).

    Default ``per_sample``: measured against ``batch_rms`` (benchmarks/recipe_parity.py, README
    "Accuracy parity": MobileNetV2, real photos labelled with AVA vote rows, 9 seeds),
    ``batch_rms`` was ahead by +0.011 test SRCC on average, but the 95 % interval over seeds,
    [-0.004, +0.026], holds 0: neither form is shown to train better, so the standard
    definition stays. Use ``batch_rms`` to reproduce the authors' code. Parts that need a loss
    per sample (Focal-R) always use the per-sample EMD; the score head's MSE is unaffected."""

    emd: Literal["per_sample", "batch_rms"] = "per_sample"


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (authors: Adam, lr 1e-5, constant)."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-5
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0


@dataclass
class APDSConfig:
    """Adaptive pseudo-label distribution sharpening (self-training round). Temperatures on the
    common 0..10 scale. ``store``: which distribution becomes the pseudo-label (ELTA 1.0:
    unsharpened; ELTA 2.0: sharpened). ``unlabeled``: a folder of images (searched recursively)
    or a text file listing image paths (one a line, relative to the file's folder); null on the
    built-in data set: its generated unlabeled split (``data.synthetic.num_unlabeled`` images).
    ``oracle``: pick beta and threshold from the authors' grid by the MAE of the kept
    pseudo-labels against the unlabeled set's TRUE labels (the paper's analysis, not a valid
    self-training result; only where those labels exist)."""

    beta: float = 1.25
    threshold: float = 0.75
    store: Literal["unsharpened", "sharpened"] = "unsharpened"
    unlabeled: str | None = None
    oracle: bool = False


@dataclass
class MethodConfig:
    """The long-tail method: its name (run folders, W&B tags) and its parts, in the order they act
    in a training step (``parts: [lds, tfa]``). Each part has its typed config node here, named
    like the part and validated by its dataclass (see :mod:`elta_lightning.parts`)."""

    name: str = "vanilla"
    parts: list[str] = field(default_factory=list)
    tfa: TFAConfig = field(default_factory=TFAConfig)
    flsa: FLSAConfig = field(default_factory=FLSAConfig)
    inv: InvConfig = field(default_factory=InvConfig)
    sqinv: SqinvConfig = field(default_factory=SqinvConfig)
    lds: LDSConfig = field(default_factory=LDSConfig)
    fds: FDSConfig = field(default_factory=FDSConfig)
    balanced_mse: BalancedMSEConfig = field(default_factory=BalancedMSEConfig)
    ranksim: RankSimConfig = field(default_factory=RankSimConfig)
    conr: ConRConfig = field(default_factory=ConRConfig)
    cmixup: CMixupConfig = field(default_factory=CMixupConfig)
    focal_r: FocalRConfig = field(default_factory=FocalRConfig)
    apds: APDSConfig = field(default_factory=APDSConfig)


@dataclass
class TrainerConfig:
    """Lightning Trainer settings. ``devices``/``num_nodes`` > 1 select DDP."""

    max_epochs: int = 20
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support bf16, 32-true otherwise
    # BatchNorm statistics over the global batch instead of each process's share (one more
    # all-reduce per BatchNorm layer; backbones with LayerNorm, e.g. Swin or ConvNeXt, have none)
    sync_batchnorm: bool = False
    gradient_clip_val: float | None = None
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    log_every_n_steps: int = 10
    deterministic: bool = False
    enable_progress_bar: bool = True
    # also write checkpoints/last.ckpt every N training steps (besides each epoch's end), so a
    # killed or preempted run loses at most N steps; null: at epoch ends only
    checkpoint_every_n_steps: int | None = 1000


@dataclass
class LoggerConfig:
    """W&B through Lightning's WandbLogger. ``mode``: ``auto`` is online when an API key is set
    and offline otherwise; ``disabled`` writes nothing."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "elta-lightning"
    entity: str | None = None
    group: str | None = None  # W&B group; null: the data set's name (a comparison sets its own)
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """Everything one run needs."""

    seed: int = 42
    runs_dir: str = "runs"
    run_id: str | None = None
    stage: Literal["train", "rrt"] = "train"  # rrt: re-train the head on a frozen backbone
    init_from: str | None = None  # checkpoint whose weights start the run (rrt: required)
    # continue an unfinished run from its last checkpoint, in its folder and W&B run: ``last``
    # (the newest unfinished run of this data set and method under runs_dir) or a run folder
    resume: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


#: The recipes shipped inside the package (the repository's top-level ``datamodules/`` and
#: ``experiments/`` are links to them), found also where the package is installed from a wheel.
PACKAGE_RECIPES = Path(__file__).resolve().parent / "recipes"


def project_root() -> Path:
    """The folder holding ``datamodules/`` and ``experiments/``: ``ELTA_CONFIG_ROOT`` when set
    (your own recipes), else the current folder when it has both (a repository checkout, or a
    copy you edit), else the recipes shipped in the package (:data:`PACKAGE_RECIPES`)."""
    if "ELTA_CONFIG_ROOT" in os.environ:
        return Path(os.environ["ELTA_CONFIG_ROOT"])
    here = Path.cwd()
    if (here / "experiments").is_dir() and (here / "datamodules").is_dir():
        return here
    return PACKAGE_RECIPES


def available(group: str) -> list[str]:
    """Names of the YAML files in a config group folder (``datamodules`` or ``experiments``)."""
    return sorted(p.stem for p in (project_root() / group).glob("*.yaml"))


def _group_file(group: str, name: str) -> Path:
    path = project_root() / group / f"{name}.yaml"
    if not path.is_file():
        names = available(group)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        kind = {"datamodules": "dataset", "experiments": "method"}[group]
        raise ConfigError(f"unknown {kind} {name!r}: no {path}. Available: {names}.{hint}")
    return path


def _merge(base: DictConfig, other: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{origin}: {_describe(error)}") from error


def _describe(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    return f"key {key!r}: {message}" if key else message


def load_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose a run config from ``dataset=`` / ``method=`` / ``parts=`` picks and ``key=value``
    overrides.

    Order: schema defaults, ``datamodules/<dataset>.yaml``, ``experiments/<method>.yaml``, the
    parts of ``parts=a,b`` appended to ``method.parts`` (and to ``method.name``:
    ``vanilla+tfa``, so such runs get their own folder, W&B tag and column in comparisons), then
    the dotted overrides.
    """
    overrides = list(overrides or [])
    picks = {"dataset": "synthetic", "method": "elta", "parts": ""}
    dotlist = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        if key in picks:
            picks[key] = value
        else:
            dotlist.append(item)
    cfg = _merge_group(OmegaConf.structured(RunConfig), "datamodules", picks["dataset"])
    cfg = _merge_group(cfg, "experiments", picks["method"])
    added = [name.strip() for name in picks["parts"].split(",") if name.strip()]
    if added:
        cfg.method.parts = [*cfg.method.parts, *added]
        cfg.method.name = "+".join([cfg.method.name, *added])
    return apply_overrides(cfg, dotlist)


def _read_yaml(path: Path) -> DictConfig:
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return loaded


def _merge_group(cfg: DictConfig, group: str, name: str) -> DictConfig:
    path = _group_file(group, name)
    return _merge(cfg, _read_yaml(path), str(path))


def apply_overrides(cfg: DictConfig, dotlist: list[str]) -> DictConfig:
    """``cfg`` with dotted ``key=value`` overrides merged in, checked by :func:`validate`."""
    cfg = _merge(cfg, OmegaConf.from_dotlist(list(dotlist)), "command line")
    validate(cfg)
    transforms = cfg.data.transforms
    if transforms.mean is None or transforms.std is None:
        from elta_lightning.models.backbone import backbone_normalisation

        mean, std = backbone_normalisation(cfg.model.backbone)
        transforms.mean = transforms.mean if transforms.mean is not None else mean
        transforms.std = transforms.std if transforms.std is not None else std
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks that types alone cannot express; raise :class:`ConfigError` naming the key."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise ConfigError(f"missing mandatory value(s): {sorted(missing)}")
    every = cfg.trainer.checkpoint_every_n_steps
    checks = [
        ("data.batch_size", cfg.data.batch_size >= 2, "at least 2"),
        ("data.eval_batch_size", (cfg.data.eval_batch_size or 1) >= 1, ">= 1 or null"),
        ("data.num_workers", cfg.data.num_workers is None or cfg.data.num_workers >= 0, ">= 0"),
        ("data.val_fraction", 0 < cfg.data.val_fraction < 1, "in (0, 1)"),
        ("optim.lr", cfg.optim.lr > 0, "> 0"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, ">= 0"),
        ("model.score_dropout", 0 <= cfg.model.score_dropout < 1, "in [0, 1)"),
        ("method.apds.beta", cfg.method.apds.beta >= 0, ">= 0"),
        ("method.apds.threshold", 0 < cfg.method.apds.threshold < 1, "in (0, 1)"),
        ("trainer.devices", cfg.trainer.devices >= 1, ">= 1"),
        ("trainer.num_nodes", cfg.trainer.num_nodes >= 1, ">= 1"),
        ("trainer.max_epochs", cfg.trainer.max_epochs >= 1, ">= 1"),
        ("trainer.checkpoint_every_n_steps", every is None or every >= 1, ">= 1 or null"),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{key} must be {expected}, got {OmegaConf.select(cfg, key)!r}")
    world = world_size_of(cfg)
    if per_process_batch(cfg.data.batch_size, world) < 2:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is the global batch: over {world} processes "
            f"that leaves {cfg.data.batch_size // world} per process, and a process needs at least "
            f"2 (batch statistics, in-batch mixing and pairs): use at least {2 * world}"
        )
    if cfg.stage == "rrt" and not cfg.init_from:
        raise ConfigError("stage=rrt needs init_from=<checkpoint of a trained model>")
    stats = cfg.data.label_stats
    try:
        check_binning(stats.bin_width, stats.many_share, stats.few_share)
    except LabelStatsError as error:
        raise ConfigError(f"data.label_stats: {error}") from error
    check_parts(list(cfg.method.parts))
    for name in PARTS:  # every part's node, listed or not: a sweep may set any of them
        part_config(cfg.method, name)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (what ``--print-config`` shows and each run folder keeps)."""
    return OmegaConf.to_yaml(cfg, resolve=True)
