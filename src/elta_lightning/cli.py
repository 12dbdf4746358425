"""The ``elta`` command line: train, test, predict, self-train, compare-demo and more.

Every ``make`` target, W&B sweep agent and SLURM script calls this, so they share one code path.
Configuration is given as ``key=value`` words: ``dataset=<name>`` and ``method=<name>`` pick the
YAML files, any dotted key overrides a value (``optim.lr=1e-4``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException

from elta_lightning.config import ConfigError, available, load_config, to_yaml
from elta_lightning.errors import EltaError
from elta_lightning.parts import PARTS

TRAIN_HELP = """\
Train a model, select the best epoch by val SRCC, test it, and write the run folder
runs/<dataset>/<method>/<run id>/ (config.yaml, checkpoints/, metrics.json, predictions.csv,
wandb/).

Overrides are key=value words, merged in this order: the schema's defaults,
datamodules/<dataset>.yaml, experiments/<method>.yaml, the parts of parts=a,b (appended to
method.parts and to the method's name), then dotted keys. Examples:
  elta train                                   # built-in data set, ELTA
  elta train dataset=para method=elta data.root=/data/PARA trainer.devices=4
  elta train optim.lr=1e-4 trainer.max_epochs=5 logger.mode=disabled
  elta train method=vanilla parts=tfa,flsa     # long-tail parts on any method
  elta train method=lds parts=tfa              # LDS weights + ELTA's feature mixup
  elta train --print-config method=elta        # show the resolved config and exit

Resume: `elta train <same words> resume=last` continues the newest unfinished run of that data
set and method under runs_dir; `elta train resume=runs/<dataset>/<method>/<run id>` continues
that run with its own config (key=value words given too are changes, refused without --force).
Either continues from checkpoints/last.ckpt (written at each epoch end and every
trainer.checkpoint_every_n_steps steps) in the same folder and W&B run. SIGTERM and SIGUSR1
stop a run with a checkpoint (exit code 128 + signal); under SLURM, SIGUSR1 (sbatch
--signal=USR1@120) requeues the job, and the requeued job resumes its run by itself.

ELTA's temperatures (method.tfa.tau1, method.tfa.tau2, method.apds.beta) act on mean scores on
the common 0..10 scale (AVA and TAD66K as they are, AADB x10, PARA x2), for every data set and
both heads, so one value means the same thing everywhere. Every key and its meaning:
src/elta_lightning/config.py and the comments in datamodules/*.yaml, experiments/*.yaml.
"""


SELF_TRAIN_HELP = """\
ELTA's self-training round (APDS) in one command: train round 1 (or take the trained model
init_from=<checkpoint>), predict the unlabeled images, sharpen and select pseudo-labels (no
ground truth used), write pseudo_labels.csv + pseudo_labels.json, train round 2 from scratch on
labelled + pseudo-labelled images, and report both rounds (table, selftrain.json). Needs the
distribution head. Keys: method.apds.{beta,threshold,store,unlabeled,oracle}. Examples:
  elta self-train method=elta                              # built-in data and unlabeled split
  elta self-train method=elta init_from=runs/.../best.ckpt # skip round-1 training
  elta self-train dataset=ava method=elta data.root=/data/AVA method.apds.unlabeled=/data/extra
Exit code 1 when no pseudo-label passes the threshold (round 2 skipped, files still written).
"""

COMPARE_HELP = """\
Compare finished run folders (no W&B server needed): runs that differ in anything but method and
seed are refused with the differing keys (or split with --group-by). Writes <out>/report.md (mean
+- std over seeds of every metric; each method minus --reference with a 95 % paired bootstrap
interval over test images, pooled over seeds), <out>/results.csv and PNG plots. Example:
  elta compare 'runs/synthetic/*/cmp-*' --reference vanilla --out reports/synthetic
"""

COMPARE_TRAIN_HELP = """\
Train every (method, seed) with the same budget (the key=value overrides), skipping pairs whose
finished run folder already has the same config (an interrupted comparison continues), then
compare them (`elta compare`). Seeds are 1..N. Example:
  elta compare-train dataset=synthetic --methods "vanilla lds_fds balanced_mse elta" --seeds 3
"""

SWEEP_HELP = """\
Sweep files (experiments/sweeps/<method>.yaml) are W&B sweep configs whose parameters are dotted
config keys, passed on the command line, so every DDP process parses the same config. Without
--local: create the sweep on the W&B server and start an agent here. With --local: run the same
file with Optuna (grid -> grid, random -> random, bayes -> TPE; early_terminate -> a pruner on
val/srcc per epoch); every trial is a normal run folder. Examples:
  elta sweep experiments/sweeps/elta.yaml dataset=aadb data.root=/data/AADB --count 20
  elta sweep experiments/sweeps/elta.yaml --local --trials 3
"""

PREPARE_HELP = """\
Check a real data set once before training: every label row (score finite and in range, image
id unique and inside the image folder) and every image (present, decodable to the end). Writes
<out>/report.md, <out>/index.csv (reused by training with data.prepared=<out>) and, with
--resize N, upright RGB copies whose short side is N pixels (fast epochs). Example:
  elta prepare dataset=ava data.root=/data/AVA --resize 300
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elta", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train, select by val SRCC, test",
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("overrides", nargs="*", metavar="key=value")
    train.add_argument("--print-config", action="store_true", help="print the config and exit")
    train.add_argument(
        "--force",
        action="store_true",
        help="resume even if the config differs from the run's (its new values win) or the "
        "run's status says another process on this machine still trains it",
    )

    test = commands.add_parser("test", help="evaluate a checkpoint on its data set's test split")
    test.add_argument("checkpoint")
    test.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.root=/data/AVA")
    test.add_argument("--out", help="also write the metrics to this JSON file")

    predict = commands.add_parser("predict", help="score every image in a folder")
    predict.add_argument("checkpoint")
    predict.add_argument("--images", required=True, help="folder of images (searched recursively)")
    predict.add_argument("--out", required=True, help="CSV file to write")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out files that cannot be decoded (counted and reported) instead of failing",
    )
    selftrain = commands.add_parser(
        "self-train",
        help="round 1, APDS pseudo-labels, round 2, side-by-side report",
        description=SELF_TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    selftrain.add_argument("overrides", nargs="*", metavar="key=value")
    selftrain.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave out unlabeled images that cannot be decoded (counted) instead of failing",
    )

    prepare = commands.add_parser(
        "prepare",
        help="check every label row and image once; write a report, an index, resized copies",
        description=PREPARE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_argument("overrides", nargs="*", metavar="key=value")
    prepare.add_argument("--out", help="output folder (default: <data.root>/prepared)")
    prepare.add_argument("--resize", type=int, help="also write copies with this short side")
    prepare.add_argument("--workers", type=int, default=os.cpu_count() or 1)

    compare = commands.add_parser(
        "compare",
        help="report over run folders: mean +- std over seeds, paired bootstrap CIs, plots",
        description=COMPARE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_GLOB")
    compare.add_argument("--reference", default="vanilla", help="method every other is paired with")
    compare.add_argument("--out", help="report folder (default: <common parent>/compare-<time>)")
    compare.add_argument(
        "--group-by",
        action="append",
        default=[],
        metavar="KEY",
        help="dotted config key whose values make separate comparisons (repeatable)",
    )
    compare.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    compare_train = commands.add_parser(
        "compare-train",
        help="train every (method, seed) with one budget, then `elta compare` them",
        description=COMPARE_TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare_train.add_argument("overrides", nargs="*", metavar="key=value")
    compare_train.add_argument(
        "--methods", default="vanilla,elta", help="comma- or space-separated methods"
    )
    compare_train.add_argument("--seeds", type=int, default=3, help="seeds 1..N per method")
    compare_train.add_argument("--reference", default="vanilla")
    compare_train.add_argument("--out", help="report folder (default: under the runs)")

    sweep = commands.add_parser(
        "sweep",
        help="a W&B sweep (create + agent), or the same sweep file locally with Optuna",
        description=SWEEP_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sweep.add_argument("file", help="sweep file, e.g. experiments/sweeps/elta.yaml")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="fixed for every run")
    sweep.add_argument("--local", action="store_true", help="run with Optuna, no W&B server")
    sweep.add_argument("--trials", type=int, default=10, help="--local: trials to run")
    sweep.add_argument("--storage", help="--local: Optuna storage URL (default: SQLite file)")
    sweep.add_argument("--count", type=int, help="W&B agent: runs to do (default: until done)")
    sweep.add_argument("--project", help="W&B project (default: logger.project)")
    sweep.add_argument("--entity", help="W&B entity")

    dashboard = commands.add_parser(
        "dashboard", help="create a W&B workspace whose panels compare methods"
    )
    dashboard.add_argument("--project", required=True)
    dashboard.add_argument("--entity")
    dashboard.add_argument("--dataset", help="only runs of this data set (config key dataset)")
    return parser


class CurrentStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a ``StreamHandler`` keeps the
    stream of its creation, which a notebook or a test harness may since have closed)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # logging's own contract: report through handleError, never raise
            self.handleError(record)


def _log_to_stderr() -> None:
    """Our INFO messages on stderr (Lightning and W&B keep their own handlers; a root handler
    would print each of their lines twice)."""
    logger = logging.getLogger("elta_lightning")
    if not logger.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _train(args: argparse.Namespace) -> None:
    from elta_lightning.runs import load_train_config

    cfg = load_train_config(args.overrides)
    if args.print_config:
        from elta_lightning.distributed import batch_plan

        print(f"# {batch_plan(cfg).describe()}")
        print(to_yaml(cfg), end="")
        return
    from elta_lightning.run import train
    from elta_lightning.runs import write_summary

    result = train(cfg, force=args.force)
    if result.already_finished:
        print(f"{result.run_dir} is finished already: nothing to resume")
    write_summary(f"{cfg.data.name} / {cfg.method.name}", result)


def _test(args: argparse.Namespace) -> None:
    from elta_lightning.run import evaluate_checkpoint
    from elta_lightning.runs import format_metrics, json_text

    metrics = evaluate_checkpoint(args.checkpoint, args.overrides)
    if args.out:
        Path(args.out).write_text(json_text(metrics))
    print(format_metrics("test", metrics, f"checkpoint: {args.checkpoint}"))


def _predict(args: argparse.Namespace) -> None:
    from elta_lightning.predict import predict_folder

    print(
        predict_folder(
            args.checkpoint, args.images, args.out, args.batch_size, args.skip_unreadable
        )
    )


def _self_train(args: argparse.Namespace) -> None:
    from elta_lightning.selftrain import self_train, write_self_train_summary

    write_self_train_summary(self_train(load_config(args.overrides), args.skip_unreadable))


def _prepare(args: argparse.Namespace) -> None:
    from elta_lightning.datamodules import build_datamodule
    from elta_lightning.datamodules.folder import FolderDataModule
    from elta_lightning.datamodules.prepare import prepare_dataset

    cfg = load_config(args.overrides)
    datamodule = build_datamodule(cfg.data)
    if not isinstance(datamodule, FolderDataModule):
        raise ConfigError(f"elta prepare checks a downloaded data set, not {cfg.data.name!r}")
    out = args.out or str(Path(cfg.data.root or ".") / "prepared")
    print(prepare_dataset(datamodule, out, args.resize, args.workers).summary())


def _compare(args: argparse.Namespace) -> None:
    from elta_lightning.comparison import compare_runs

    report = compare_runs(
        args.runs,
        reference=args.reference,
        out=args.out,
        group_by=args.group_by,
        resamples=args.resamples,
        seed=args.seed,
    )
    print(report.summary())


def _compare_train(args: argparse.Namespace) -> None:
    from elta_lightning.compare import train_and_compare

    methods = [m for m in args.methods.replace(",", " ").split() if m]
    report = train_and_compare(methods, args.seeds, args.overrides, args.reference, args.out)
    print(report.summary())


def _sweep(args: argparse.Namespace) -> None:
    from elta_lightning.sweeps import run_local_sweep, run_wandb_sweep

    if args.local:
        print(run_local_sweep(args.file, args.trials, args.overrides, storage=args.storage))
    else:
        run_wandb_sweep(args.file, args.overrides, args.count, args.project, args.entity)


def _dashboard(args: argparse.Namespace) -> None:
    from elta_lightning.dashboard import create_dashboard

    print(create_dashboard(args.project, entity=args.entity, dataset=args.dataset))


#: The function of each sub-command.
COMMANDS = {
    "train": _train,
    "test": _test,
    "predict": _predict,
    "self-train": _self_train,
    "prepare": _prepare,
    "compare": _compare,
    "compare-train": _compare_train,
    "sweep": _sweep,
    "dashboard": _dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``elta`` console script; returns the exit code."""
    from elta_lightning.resume import RunInterrupted

    args = _parser().parse_args(argv)
    _log_to_stderr()
    try:
        COMMANDS[args.command](args)
    except RunInterrupted as stop:
        folder = stop.run_dir or "<run folder>"
        print(f"elta: run {stop}; continue it: elta train resume={folder}", file=sys.stderr)
        return int(stop.code)
    except (ConfigError, MisconfigurationException) as error:
        print(f"elta: configuration error: {error}", file=sys.stderr)
        print(
            f"  datasets: {available('datamodules')}; methods: {available('experiments')}; "
            f"parts: {sorted(PARTS)}",
            file=sys.stderr,
        )
        return 2
    except EltaError as error:
        print(f"elta: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
