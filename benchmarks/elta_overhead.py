"""Time ELTA's per-step extras (TFA + FLSA) against one training step of a small backbone.

Measures, as medians over ``--steps`` timed steps (after warm-up):

* TFA + FLSA: ``tfa_mix`` on (batch, dim) features with ``requires_grad`` (m mixed samples), then
  ``flsa_loss`` on the augmented batch and ``backward``;
* one training step of a timm backbone (default ``test_convnext``, random init) at ``--size`` px:
  forward, backward and an Adam step on a (batch, 3, size, size) random batch.

Prints a markdown table with the median milliseconds and the overhead ratio. Timings on a shared
machine are noisy. Example: ``python benchmarks/elta_overhead.py --device cpu --steps 10``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch

from elta_lightning.elta import flsa_loss, resolve_num_mixed, tfa_mix


def _median_ms(step: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _elta_step(batch: int, dim: int, num_mixed: int, device: torch.device, seed: int):
    gen = torch.Generator(device=device).manual_seed(seed)
    features = torch.randn(batch, dim, device=device, requires_grad=True)
    targets = torch.softmax(torch.randn(batch, 10, device=device), dim=1)
    scores = targets @ torch.arange(1.0, 11.0, device=device)

    def step() -> None:
        features.grad = None
        mixed = tfa_mix(features, targets, scores, num_mixed, 0.5, 2.0, generator=gen)
        flsa_loss(mixed.features, mixed.scores).backward()

    return step


def _backbone_step(name: str, batch: int, size: int, device: torch.device):
    model = timm.create_model(name, pretrained=False, num_classes=10).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.softmax(torch.randn(batch, 10, device=device), dim=1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension for TFA/FLSA")
    parser.add_argument("--backbone", default="test_convnext", help="timm model name")
    parser.add_argument("--size", type=int, default=160, help="backbone input size (px)")
    parser.add_argument("--ratio", type=float, default=0.25, help="second TFA row: m = ratio * B")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    rows = []
    backbone_ms = _median_ms(
        _backbone_step(args.backbone, args.batch, args.size, device),
        args.steps,
        args.warmup,
        device,
    )
    for label, m in (
        ("count, ELTA 1.0", resolve_num_mixed(args.batch)),
        (f"ratio {args.ratio:g}", resolve_num_mixed(args.batch, ratio=args.ratio)),
    ):
        ms = _median_ms(
            _elta_step(args.batch, args.dim, m, device, args.seed), args.steps, args.warmup, device
        )
        rows.append((f"TFA + FLSA fwd+bwd, m={m} ({label})", ms))

    threads = torch.get_num_threads()
    print(
        f"device={device} threads={threads} batch={args.batch} dim={args.dim} "
        f"backbone={args.backbone}@{args.size}px steps={args.steps} (median; noisy if shared)\n"
    )
    print("| step | median ms | ratio to backbone step |")
    print("|---|---:|---:|")
    print(f"| {args.backbone} train step (fwd+bwd+Adam) | {backbone_ms:.2f} | 1.000 |")
    for label, ms in rows:
        print(f"| {label} | {ms:.3f} | {ms / backbone_ms:.4f} |")


if __name__ == "__main__":
    main()
