"""Time the per-training-step cost of every long-tail part against one backbone training step.

For each part of ``elta_lightning.parts.PARTS`` (at its default config, plus a few variants whose
cost differs), measures the time its hooks add to a training step of a real
:class:`~elta_lightning.models.module.IAAModule` from the pooled features on::

    features (B, D), requires grad -> sample_weights -> transform_inputs -> transform_features
        -> head -> task loss (module's EMD / MSE, or the part's) -> + auxiliary losses -> backward

through ``IAAModule.step_losses`` itself (the training step minus logging), with a stand-in
backbone that returns precomputed features (1024-d by default, the ELTA authors' pooled width),
against the same step with no parts: a part's row is its own cost, not the backbone's.
Exception: ConR's hook runs the backbone over the two extra views of each image (forward and
backward), so its main row
includes those backbone passes; a second row gives its cost with the view features precomputed.
The backbone (default timm ``test_convnext``) gets a linear projection to ``--dim`` features
where its width differs, so that ConR's views reach the ``--dim`` head.

The reference: one training step of the backbone with its head and task loss at ``--size`` px
(forward, backward, Adam step) on random images. Batch: ``--batch`` images with AVA-like vote
distributions over 10 levels (``--head distribution``) or scores (``--head score``), mean scores
long-tailed around 5.4 on the common 0..10 scale; label statistics from 20k such scores; weights
ones. FDS runs at epoch 1 (calibration on) with statistics primed from one epoch of features.

Reported: median over ``--steps`` timed steps (after ``--warmup``) of the difference between a
step with the part and the step without, timed in alternation so that drift of a shared machine
cancels; the ratio is to the backbone step's median. Results are not checked: timings on a shared
machine are noisy (a difference below ~0.05 ms is noise on a CPU).
Example: ``python benchmarks/part_overhead.py --device cpu --steps 20 --out part_overhead.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from elta_lightning.config import load_config
from elta_lightning.label_stats import LabelStats
from elta_lightning.models.heads import DistributionHead, ScoreHead
from elta_lightning.models.module import IAAModule, scale_hparams
from elta_lightning.parts import PARTS, Part, PartContext, part_config
from elta_lightning.scales import AVA_SCALE

#: Extra rows: (part, config changes, label) of settings whose cost differs from the default's.
VARIANTS = (
    ("balanced_mse", {"variant": "gai"}, "variant=gai"),
    ("balanced_mse", {"variant": "bni"}, "variant=bni"),
    ("tfa", {"mixed_ratio": 0.25}, "mixed_ratio=0.25 (ELTA 2.0)"),
    ("cmixup", {"level": "inputs"}, "level=inputs (mixes the images)"),
)
#: Mean and spread of AVA's mean scores (both tails rare), and the spread of a vote distribution.
SCORE_MEAN, SCORE_STD, VOTE_STD = 5.4, 0.73, 1.5
FDS_EPOCH = 1  # FeatureDistributionSmoothing calibrates from epoch start_smooth (1) on
FDS_PRIMER = 5_000  # features of one epoch, to prime FDS's per-bin statistics


class _BenchModule(IAAModule):
    """An IAAModule whose epoch is set by hand (no Trainer): FDS calibrates from epoch 1."""

    epoch = 0

    @property
    def current_epoch(self) -> int:  # type: ignore[override]
        return self.epoch


class _Projected(nn.Module):
    """The backbone's pooled features projected to ``dim`` (so ConR's views fit the head)."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(backbone.feature_dim, dim)
        self.feature_dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(images))


class _Precomputed(nn.Module):
    """Stand-in backbone: the precomputed ``features`` for a batch of the training batch's size
    (its images, or the images a part mixed in their place: the backbone would run once either
    way, so a part's row is its own cost), ``others`` for any other input (ConR's extra views:
    the real backbone, or their precomputed features)."""

    def __init__(self, features: torch.Tensor, others: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.others = others

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features if len(images) == len(self.features) else self.others(images)


class _FixedFeatures(nn.Module):
    """Precomputed features whatever the input (ConR's view features, no backbone)."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device) -> float:
    start = time.perf_counter()
    step()
    _sync(device)
    return (time.perf_counter() - start) * 1000


def _samples_ms(
    step: Callable[[], None], steps: int, warmup: int, device: torch.device
) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    return [_timed(step, device) for _ in range(steps)]


def _paired_ms(
    base: Callable[[], None],
    step: Callable[[], None],
    steps: int,
    warmup: int,
    device: torch.device,
) -> float:
    """Median of (step - base) over ``steps`` alternating pairs (order alternates too)."""
    for _ in range(warmup):
        base()
        step()
    _sync(device)
    added = []
    for i in range(steps):
        if i % 2:
            b, s = _timed(base, device), _timed(step, device)
        else:
            s, b = _timed(step, device), _timed(base, device)
        added.append(s - b)
    return statistics.median(added)


def _labels(count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """AVA-like vote distributions (count, 10) over levels 1..10 and their mean scores."""
    centre = (SCORE_MEAN + SCORE_STD * torch.randn(count, generator=gen)).clamp(1.0, 10.0)
    levels = torch.tensor(AVA_SCALE.levels, dtype=torch.float32)
    dist = torch.softmax(-((levels - centre[:, None]) ** 2) / (2 * VOTE_STD**2), dim=1)
    return dist, dist @ levels


def _module(args: argparse.Namespace, stats: LabelStats) -> _BenchModule:
    cfg = load_config(
        [
            "dataset=synthetic",
            "method=vanilla",
            f"model.backbone={args.backbone}",
            "model.pretrained=none",
            f"model.head={args.head}",
        ]
    )
    return _BenchModule(
        config=OmegaConf.to_container(cfg, resolve=True),
        scale=scale_hparams(AVA_SCALE),
        label_stats=stats.hparams(),
        load_pretrained=False,
    )


def _backbone_step(module: _BenchModule, batch: dict[str, torch.Tensor]):
    """One training step of the backbone + its native head, no parts (``step_losses``): forward,
    task loss, backward, Adam."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-5)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        module.step_losses(batch)["loss"].backward()
        optimizer.step()

    return run


def _parts_step(module: _BenchModule, parts: list[Part], batch: dict[str, torch.Tensor]):
    """The training step from the features on, through ``IAAModule.step_losses`` itself (the
    hook order of every training step), with ``parts``: the module's backbone must be a
    :class:`_Precomputed` of the batch's features."""
    states = [part.state for part in parts if part.state is not None]
    features = module.backbone.features

    def run() -> None:
        features.grad = None
        module.zero_grad(set_to_none=True)
        for state in states:
            state.zero_grad(set_to_none=True)
        module.parts = parts
        module.step_losses(batch)["loss"].backward()

    return run


def _build_part(name: str, changes: dict, context: PartContext, module, device) -> Part:
    method = module.cfg.method
    config = part_config(method, name) if name in method else PARTS[name].config_class()
    part = PARTS[name](dataclasses.replace(config, **changes), context)
    if part.state is not None:
        part.state.to(device)
    return part


def _prime_fds(part: Part, module: _BenchModule, features: torch.Tensor, scores: torch.Tensor):
    """One epoch of statistics (as ``on_train_epoch_end`` folds them in), then calibration on."""
    part.state.add(features, module.label_stats.bin_index(scores))
    part.state.update(part.config.momentum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--dim", type=int, default=1024, help="pooled feature width")
    parser.add_argument("--head", choices=["distribution", "score"], default="distribution")
    parser.add_argument("--backbone", default="test_convnext", help="timm model name")
    parser.add_argument("--size", type=int, default=64, help="backbone input size (px)")
    parser.add_argument("--no-variants", action="store_true", help="default configs only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    _, train_scores = _labels(20_000, gen)
    stats = LabelStats.from_scores(train_scores, AVA_SCALE.to_common)
    dist, scores = (t.to(device) for t in _labels(args.batch, gen))
    images = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
    views = torch.randn(args.batch, 2, 3, args.size, args.size, generator=gen).to(device)

    weights = torch.ones(args.batch, device=device)
    plain = {"image": images, "dist": dist, "score": scores, "weight": weights}
    with_views = {**plain, "views": views}

    # The backbone step: the real module, its native head (timed before and after the parts).
    module = _module(args, stats).to(device).train()
    backbone_step = _backbone_step(module, plain)
    backbone_times = _samples_ms(backbone_step, args.steps, args.warmup, device)

    # The parts' module: the same backbone (projected to --dim) and a --dim head.
    module = _module(args, stats)
    native_dim = module.backbone.feature_dim
    if native_dim != args.dim:
        module.backbone = _Projected(module.backbone, args.dim)
    if module.head_kind == "distribution":
        module.head = DistributionHead(
            args.dim, module.scale.num_levels, module.cfg.model.hidden_dim
        )
    else:
        module.head = ScoreHead(args.dim, module.cfg.model.score_dropout)
    module = module.to(device).train()
    context = PartContext(
        seed=args.seed,
        stats=stats,
        scale=module.scale,
        head_kind=module.head_kind,
        feature_dim=args.dim,
    )
    features = torch.randn(args.batch, args.dim, device=device, requires_grad=True)
    backbone = module.backbone
    module.backbone = _Precomputed(features, backbone)
    no_parts = _parts_step(module, [], plain)
    no_parts_ms = statistics.median(_samples_ms(no_parts, args.steps, args.warmup, device))

    settings = [(name, {}, "default") for name in PARTS]
    if not args.no_variants:
        settings += [v for v in VARIANTS if v[0] in PARTS]
    rows = []
    for name, changes, label in settings:
        part = _build_part(name, changes, context, module, device)
        module.epoch = FDS_EPOCH if name == "fds" else 0
        if name == "fds":
            primer = torch.randn(FDS_PRIMER, args.dim, device=device)
            _prime_fds(part, module, primer, train_scores[:FDS_PRIMER].to(device))
            label = f"{label}, epoch {FDS_EPOCH} (calibrating)"
        step = with_views if part.views_needed else plain
        ms = _paired_ms(
            no_parts, _parts_step(module, [part], step), args.steps, args.warmup, device
        )
        if part.views_needed:
            label = f"{label}; INCLUDES backbone fwd+bwd over {part.views_needed} views/image"
        rows.append((name, label, ms))
        if part.views_needed:
            count = args.batch * part.views_needed
            view_features = torch.randn(count, args.dim, device=device, requires_grad=True)
            module.backbone.others = _FixedFeatures(view_features)
            try:
                ms = _paired_ms(
                    no_parts, _parts_step(module, [part], step), args.steps, args.warmup, device
                )
            finally:
                module.backbone.others = backbone
            rows.append((name, f"{label.split(';')[0]}; view features precomputed (loss only)", ms))

    # The backbone step again after the parts: its median over both runs (a shared machine drifts).
    backbone_times += _samples_ms(backbone_step, args.steps, 1, device)
    backbone_ms = statistics.median(backbone_times)

    projection = "" if native_dim == args.dim else f" (+ Linear {native_dim}->{args.dim})"
    lines = [
        f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} "
        f"cpu={platform.processor() or platform.machine()} batch={args.batch} dim={args.dim} "
        f"head={args.head} backbone={args.backbone}@{args.size}px{projection} "
        f"steps={args.steps} warmup={args.warmup} (medians; noisy if shared)",
        "",
        "| part | config | ms per step added | ratio to backbone step |",
        "|---|---|---:|---:|",
        f"| (backbone step) | {args.backbone} fwd+bwd+Adam, native head | {backbone_ms:.2f} "
        "| 1.000 |",
        f"| (no parts) | features -> head -> loss -> backward, total | {no_parts_ms:.3f} "
        f"| {no_parts_ms / backbone_ms:.4f} |",
    ]
    for name, label, ms in rows:
        lines.append(f"| {name} | {label} | {ms:.3f} | {ms / backbone_ms:.4f} |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
