"""GPU check: one short DDP `elta train` over all visible GPUs, then a training throughput table,
written to one markdown file and a JSON file beside it (the README's GPU numbers, refreshed by
one command).

1. **DDP job**: ``elta train method=elta`` on the built-in synthetic data set (its recipe:
   ``resnet10t``, 64 px) over ``--devices`` processes (default: every visible GPU) for
   ``--ddp-epochs`` epochs, global batch ``--batch-per-gpu`` x processes, into ``--runs-dir``
   (default: a temporary folder); the report says whether it finished, its wall time (the data
   set generated beforehand), its single run folder, ``metrics.json``'s test SRCC, the training
   epoch time and images/s over all processes, and rank 0's peak memory.
2. **Throughput on one GPU**: ``elta train``'s real Lightning loop (the loop of
   ``train_throughput.py``) for vanilla and ELTA, fp32 (``32-true``) and ``bf16-mixed`` (when
   the GPU supports bf16), on a ``--backbone`` (default SwinV2-B, random init) with batch
   ``--batch-per-gpu`` over drawn ``--size`` JPEGs resized to ``--resize`` and cropped to
   ``--crop``: images/s, ms/step, the data wait per step and its share of the step (wait /
   (wait + compute), medians of ``--steps`` steps after ``--warmup``), and the peak allocated
   GPU memory of each loop.

On a GPU machine, from the repository root::

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.md

Without a visible GPU it stops with one line and exit status 1. ``--cpu-smoke`` runs the same
code on the CPU with tiny settings (tiny data, a tiny timm model, 2 gloo processes for the DDP
job), so that the check itself is tested on machines without a GPU. Exit status 1 also when the
DDP job failed or timed out (``--ddp-timeout``; its last stderr lines are in the report) or a
loop failed (out of GPU memory: that row says so, the others still run; lower
``--batch-per-gpu``). ``benchmarks/gpu_check.sh`` runs this with ``.venv``'s Python.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
import train_throughput  # beside this file

from elta_lightning.config import load_config
from elta_lightning.datamodules.base import available_cores, loader_settings
from elta_lightning.datamodules.synthetic import ensure_generated
from elta_lightning.distributed import batch_plan
from elta_lightning.errors import ConfigError
from elta_lightning.run import resolve_precision

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("vanilla", "elta")
PRECISIONS = ("32-true", "bf16-mixed")
#: Sizes of a check on GPUs: SwinV2-B (the default backbone), the authors' 300 -> 256 crop on
#: AVA-sized photos.
GPU_DEFAULTS: dict[str, Any] = {
    "backbone": "swinv2_base_window8_256",
    "batch_per_gpu": 32,
    "size": "800x600",
    "resize": 300,
    "crop": 256,
    "steps": 20,
    "warmup": 5,
    "ddp_epochs": 2,
}
#: Sizes of ``--cpu-smoke``: seconds per loop on one CPU thread.
SMOKE_DEFAULTS: dict[str, Any] = {
    "backbone": "test_convnext",
    "batch_per_gpu": 4,
    "size": "64x48",
    "resize": 36,
    "crop": 32,
    "steps": 3,
    "warmup": 1,
    "ddp_epochs": 1,
}
#: The smoke DDP job's data and model: a tiny synthetic set (the tests' sizes, so their cached
#: copy is reused), 32 px crops, a tiny timm model, no loader workers.
SMOKE_DDP_OVERRIDES = (
    "data.synthetic.num_train=96",
    "data.synthetic.num_val=30",
    "data.synthetic.num_test=37",
    "data.synthetic.image_size=40",
    "data.transforms.train_resize=36",
    "data.transforms.crop=32",
    "data.transforms.eval_resize=32",
    "data.num_workers=0",
    "model.backbone=test_convnext",
)
ERROR_LINES = 15  # lines of a failed job's stderr kept in the report


@dataclass(frozen=True)
class Plan:
    """What one check runs: where, on how many processes, and the sizes of both parts."""

    accelerator: str  # gpu | cpu (--cpu-smoke)
    devices: int
    precisions: tuple[str, ...]
    backbone: str
    batch_per_gpu: int
    size: str  # the drawn JPEGs of the throughput loops, WIDTHxHEIGHT
    resize: int
    crop: int
    steps: int
    warmup: int
    ddp_epochs: int
    ddp_overrides: tuple[str, ...]  # the DDP job's settings beyond the synthetic recipe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; sizes left out take :data:`GPU_DEFAULTS` or, with ``--cpu-smoke``,
    :data:`SMOKE_DEFAULTS`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "benchmarks" / "results" / f"gpu_check-{stamp}.md",
        help="the markdown report (the JSON goes beside it, .json); default: a timestamped "
        "file under benchmarks/results/",
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny settings on the CPU")
    parser.add_argument("--devices", type=int, help="DDP processes (default: all GPUs; smoke 2)")
    parser.add_argument("--backbone", help=f"timm model of the loops ({GPU_DEFAULTS['backbone']})")
    parser.add_argument("--batch-per-gpu", type=int, help="batch per process (GPU: 32)")
    parser.add_argument("--size", help="drawn JPEGs of the loops, WIDTHxHEIGHT (GPU: 800x600)")
    parser.add_argument("--resize", type=int, help="train resize of the loops (GPU: 300)")
    parser.add_argument("--crop", type=int, help="train crop of the loops (GPU: 256)")
    parser.add_argument("--steps", type=int, help="timed steps per loop (GPU: 20)")
    parser.add_argument("--warmup", type=int, help="steps left out of the timing (GPU: 5)")
    parser.add_argument("--ddp-epochs", type=int, help="epochs of the DDP job (GPU: 2)")
    parser.add_argument(
        "--ddp-override",
        nargs="*",
        default=[],
        help="more key=value for the DDP job (on the synthetic data; e.g. model.backbone=resnet18)",
    )
    parser.add_argument("--runs-dir", type=Path, help="keep the DDP run here (default: temp)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=REPO_ROOT / ".cache" / "elta-synthetic",
        help="the synthetic data set's cache (default: make train's)",
    )
    parser.add_argument("--ddp-timeout", type=int, default=900, help="seconds for the DDP job")
    args = parser.parse_args(argv)
    defaults = SMOKE_DEFAULTS if args.cpu_smoke else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    """The check's plan; one line and exit status 1 (``SystemExit``) when no GPU is visible and
    ``--cpu-smoke`` was not asked for, before anything runs."""
    if args.cpu_smoke:
        accelerator, devices, precisions = "cpu", args.devices or 2, PRECISIONS
        ddp_overrides = (*SMOKE_DDP_OVERRIDES, *args.ddp_override)
    else:
        count = torch.cuda.device_count()
        if count == 0:
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only"
            raise SystemExit(
                f"gpu_check: no CUDA GPU visible (torch {torch.__version__}, {build}); "
                "run it on a GPU machine, or add --cpu-smoke for the tiny CPU version"
            )
        accelerator, devices = "gpu", args.devices or count
        precisions = PRECISIONS if torch.cuda.is_bf16_supported() else PRECISIONS[:1]
        ddp_overrides = tuple(args.ddp_override)
    return Plan(
        accelerator=accelerator,
        devices=devices,
        precisions=precisions,
        backbone=args.backbone,
        batch_per_gpu=args.batch_per_gpu,
        size=args.size,
        resize=args.resize,
        crop=args.crop,
        steps=args.steps,
        warmup=args.warmup,
        ddp_epochs=args.ddp_epochs,
        ddp_overrides=ddp_overrides,
    )


def describe_machine() -> dict[str, Any]:
    """The GPUs (name and memory of each), versions of torch, CUDA, cuDNN, Lightning and
    Python, and the CPU cores this process may use: what the numbers depend on."""
    gpus = [
        {
            "name": torch.cuda.get_device_name(k),
            "memory_gib": round(torch.cuda.get_device_properties(k).total_memory / 2**30, 1),
        }
        for k in range(torch.cuda.device_count())
    ]
    return {
        "gpus": gpus,
        "gpu_count": len(gpus),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if gpus else None,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "cpu_cores": available_cores(),
        "cpu": platform.processor() or platform.machine(),
    }


def ddp_overrides(plan: Plan, runs_dir: Path, cache_dir: Path) -> list[str]:
    """The DDP job's ``elta train`` arguments: ELTA on the synthetic recipe, the global batch
    ``batch_per_gpu x devices`` (``data.batch_size`` is global: the split gives each process
    ``batch_per_gpu``), nothing logged, no progress bar."""
    return [
        "method=elta",
        f"runs_dir={runs_dir}",
        f"data.synthetic.cache_dir={cache_dir}",
        f"data.batch_size={plan.batch_per_gpu * plan.devices}",
        f"trainer.accelerator={plan.accelerator}",
        f"trainer.devices={plan.devices}",
        f"trainer.max_epochs={plan.ddp_epochs}",
        "trainer.enable_progress_bar=false",
        "logger.mode=disabled",
        *plan.ddp_overrides,
    ]


def run_command(command: list[str], timeout: int) -> tuple[int | None, str]:
    """(exit status, stderr) of ``command`` in a session of its own; on a timeout the whole
    session (the DDP ranks it launched too) is killed and the status is None: a hung collective
    must end the check, not stall it."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
        return None, stderr
    return process.returncode, stderr


def run_folders(runs_dir: Path) -> set[Path]:
    """The run folders under ``runs_dir`` (each has a status.json from its start on)."""
    return {path.parent for path in runs_dir.rglob("status.json")}


def finite_or_none(value: float | None) -> float | None:
    """``value``, or None for a missing or NaN/infinite one (strict JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None


def ddp_check(plan: Plan, runs_dir: Path, cache_dir: Path, timeout: int) -> dict[str, Any]:
    """Runs the DDP job (``python -m elta_lightning.cli train``, the ``elta`` command) and reads
    back what it wrote: exit status, wall time, the run folders it added (all ranks must share
    one), metrics.json's test SRCC, epoch time and peak memory."""
    overrides = ddp_overrides(plan, runs_dir, cache_dir)
    cfg = load_config(overrides)  # a bad setting (e.g. a batch that does not split) stops here
    if cfg.data.name != "synthetic":
        raise ConfigError("the DDP job trains on the built-in data set (dataset=synthetic)")
    split = batch_plan(cfg)
    before = run_folders(runs_dir)
    ensure_generated(cfg.data.synthetic)  # the wall time is the job's, not the data set's
    command = [sys.executable, "-m", "elta_lightning.cli", "train", *overrides]
    print(f"DDP job: elta train over {plan.devices} {plan.accelerator} processes ...", flush=True)
    start = time.perf_counter()
    status, stderr = run_command(command, timeout)
    wall = time.perf_counter() - start
    folders = sorted(run_folders(runs_dir) - before)
    metrics_file = folders[0] / "metrics.json" if len(folders) == 1 else None
    metrics = json.loads(metrics_file.read_text()) if metrics_file and metrics_file.exists() else {}
    epoch_time = finite_or_none(metrics.get("train/epoch_time_s"))
    images = cfg.data.synthetic.num_train // split.global_batch * split.global_batch
    ok = status == 0 and len(folders) == 1 and bool(metrics)
    return {
        "ok": ok,
        "exit_status": status,
        "timed_out": status is None,
        "wall_s": wall,
        "command": "elta train " + shlex.join(overrides),
        "processes": split.world_size,
        "precision": resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator),
        "global_batch": split.global_batch,
        "batch_per_process": split.per_process_batch,
        "batch": split.describe(),
        "run_folders": [str(folder.relative_to(runs_dir)) for folder in folders],
        "metrics_file": bool(metrics),
        "test_srcc": finite_or_none(metrics.get("test/srcc")),
        "epochs": plan.ddp_epochs,
        "epoch_time_s": epoch_time,
        "train_images_per_epoch": images,
        "images_per_s": images / epoch_time if epoch_time else None,
        "peak_memory_mb_rank0": finite_or_none(metrics.get("train/peak_memory_mb")),
        "error": None if ok else "\n".join(stderr.strip().splitlines()[-ERROR_LINES:]),
    }


def loop_options(plan: Plan) -> argparse.Namespace:
    """``train_throughput.py``'s options for the loops of this plan (its own parser, so every
    option it reads has its default)."""
    return train_throughput.parse_args(
        [
            f"--backbone={plan.backbone}",
            f"--batch={plan.batch_per_gpu}",
            f"--size={plan.size}",
            f"--resize={plan.resize}",
            f"--crop={plan.crop}",
            f"--steps={plan.steps}",
            f"--warmup={plan.warmup}",
        ]
    )


def measure_loop(
    options: argparse.Namespace, folder: Path, setting: train_throughput.Setting, method: str
) -> dict[str, Any]:
    """One row: ``elta train``'s loop for ``method`` at ``setting`` (one device, the automatic
    loader workers); out of GPU memory is a row that says so, the other rows still run."""
    row: dict[str, Any] = {"method": method, "precision": setting.precision, "error": None}
    gc.collect()  # the previous loop's trainer, model and loader workers go before this one
    torch.cuda.empty_cache()
    try:
        timing = train_throughput.elta_loop(options, folder, setting, method, None)
    except torch.cuda.OutOfMemoryError:
        return {**row, "error": f"out of GPU memory at batch {options.batch}"}
    rate, wait, compute = train_throughput.summarise(timing)
    return {
        **row,
        "images_per_s": rate,
        "ms_per_step": wait + compute,
        "wait_ms": wait,
        "compute_ms": compute,
        "wait_share": wait / (wait + compute),
        "peak_memory_mb": timing.peak_mb,
    }


def throughput_table(plan: Plan, work: Path) -> list[dict[str, Any]]:
    """Every method at every precision of the plan, on one device, over one folder of drawn
    JPEGs written under ``work``."""
    options = loop_options(plan)
    folder = train_throughput.prepare_folder(options, work)
    rows = []
    for method in METHODS:
        for precision in plan.precisions:
            print(f"throughput: {method} {precision} ...", flush=True)
            setting = train_throughput.Setting(plan.accelerator, precision)
            rows.append(measure_loop(options, folder, setting, method))
    return rows


def number(value: float | None, digits: int = 1) -> str:
    """A table cell: thousands separated, ``-`` for a missing value."""
    return "-" if value is None else f"{value:,.{digits}f}"


def machine_line(machine: dict[str, Any]) -> str:
    """The machine in one sentence."""
    names = sorted({f"{gpu['name']} ({gpu['memory_gib']} GiB)" for gpu in machine["gpus"]})
    if names:
        gpus = f"{machine['gpu_count']} x {', '.join(names)}"
        torch_line = f"torch {machine['torch']} (CUDA {machine['cuda']}, cuDNN {machine['cudnn']})"
    else:
        gpus, torch_line = "no GPU", f"torch {machine['torch']}"
    return (
        f"{gpus}; {torch_line}, Lightning {machine['lightning']}, Python {machine['python']}; "
        f"{machine['cpu_cores']} CPU cores ({machine['cpu']})."
    )


def ddp_section(ddp: dict[str, Any], plan: Plan) -> list[str]:
    """Part 1 as a two-column table, with the failure's last stderr lines when it failed."""
    if ddp["timed_out"]:
        finished = f"no: killed after {ddp['wall_s']:.0f} s (--ddp-timeout)"
    else:
        finished = "yes" if ddp["exit_status"] == 0 else "no"
        finished += f" (exit status {ddp['exit_status']})"
    folders = ddp["run_folders"]
    rate = ddp["images_per_s"]
    lines = [
        f"## DDP job: `elta train` over {ddp['processes']} {plan.accelerator} processes",
        "",
        f"`{ddp['command']}`",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| finished | {finished} |",
        f"| wall time | {ddp['wall_s']:.1f} s (process start, {ddp['epochs']} epoch(s), test; "
        "data set generated before) |",
        f"| precision | {ddp['precision']} |",
        f"| run folders | {len(folders)}: {', '.join(f'`{f}`' for f in folders) or '-'} |",
        f"| metrics.json | {'yes' if ddp['metrics_file'] else 'no'}, "
        f"test SRCC {number(ddp['test_srcc'], 3)} |",
        f"| batch | {ddp['batch']} |",
        f"| training | {number(ddp['epoch_time_s'], 2)} s per epoch (mean of {ddp['epochs']}, "
        f"the first included): {number(rate)} images/s over all processes |",
        f"| peak memory, rank 0 | {number(ddp['peak_memory_mb_rank0'], 0)} MiB |",
    ]
    if ddp["error"]:
        lines += ["", "Last lines of the job's stderr:", "", "```", ddp["error"], "```"]
    return lines


def throughput_section(rows: list[dict[str, Any]], plan: Plan) -> list[str]:
    """Part 2: one row per method and precision."""
    kind = "cuda" if plan.accelerator == "gpu" else "cpu"
    workers = loader_settings(None, kind, 1).num_workers
    device = "one GPU" if plan.accelerator == "gpu" else "the CPU"
    memory = (
        "the most GPU memory allocated during the loop"
        if plan.accelerator == "gpu"
        else "the process's max RSS so far (CPU: it only grows)"
    )
    lines = [
        f"## Training throughput on {device}",
        "",
        f"`elta train`'s loop (`benchmarks/train_throughput.py`): `{plan.backbone}` (random "
        f"init), batch {plan.batch_per_gpu}, drawn {plan.size} JPEGs resized to {plan.resize} "
        f"and cropped to {plan.crop}, {workers} loader worker(s) (the automatic rule); medians "
        f"of {plan.steps} timed steps after {plan.warmup}. Wait: from the end of one step to the "
        f"start of the next (loading, copy to the device); wait share = wait / (wait + "
        f"compute). Peak memory: {memory}.",
        "",
        "| method | precision | images/s | ms/step | wait ms/step | wait share | peak MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row["error"]:
            lines.append(f"| {row['method']} | {row['precision']} | {row['error']} | | | | |")
            continue
        lines.append(
            f"| {row['method']} | {row['precision']} | {number(row['images_per_s'])} "
            f"| {number(row['ms_per_step'])} | {number(row['wait_ms'])} "
            f"| {row['wait_share']:.1%} | {number(row['peak_memory_mb'], 0)} |"
        )
    if "bf16-mixed" not in plan.precisions:
        lines += ["", "bf16-mixed left out: this GPU does not support bf16."]
    return lines


def render(report: dict[str, Any], plan: Plan) -> str:
    """The markdown report: title, machine and command, then both parts."""
    title = "GPU check" if plan.accelerator == "gpu" else "GPU check, CPU smoke run"
    lines = [
        f"# {title}, {report['date']}",
        "",
        machine_line(report["machine"]),
        "",
        f"Command: `{report['command']}`",
        "",
        *ddp_section(report["ddp"], plan),
        "",
        *throughput_section(report["throughput"], plan),
    ]
    return "\n".join(lines) + "\n"


def run_check(plan: Plan, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both parts; the DDP run goes to ``--runs-dir`` or under ``work``."""
    runs_dir = (args.runs_dir or work / "runs").resolve()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", *sys.argv]),
        "machine": describe_machine(),
        "plan": asdict(plan),
        "ddp": ddp_check(plan, runs_dir, args.cache_dir.resolve(), args.ddp_timeout),
        "throughput": throughput_table(plan, work),
    }


def main(argv: list[str] | None = None) -> int:
    """Runs the check, prints the report and writes it (markdown + JSON); 1 when a part
    failed."""
    args = parse_args(argv)
    plan = make_plan(args)
    train_throughput.quiet_lightning()
    with tempfile.TemporaryDirectory() as work:
        try:
            report = run_check(plan, args, Path(work))
        except ConfigError as error:
            raise SystemExit(f"gpu_check: {error}") from None
    markdown = render(report, plan)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(markdown)
    failed = [f"{row['method']} {row['precision']}" for row in report["throughput"] if row["error"]]
    if not report["ddp"]["ok"]:
        failed.insert(0, "the DDP job")
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)}; see {args.out}", file=sys.stderr)
        return 1
    print(f"written: {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
