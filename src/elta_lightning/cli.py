"""The ``elta`` command line: ``elta train``, ``elta test``, ``elta predict``.

Every ``make`` target, W&B sweep agent and SLURM script calls this, so they share one code path.
Configuration is given as ``key=value`` words: ``dataset=<name>`` and ``method=<name>`` pick the
YAML files, any dotted key overrides a value (``optim.lr=1e-4``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from elta_lightning.config import ConfigError, available, load_config, to_yaml
from elta_lightning.errors import EltaError

TRAIN_HELP = """\
Train a model, select the best epoch by val SRCC, test it, and write the run folder
runs/<dataset>/<method>/<run id>/ (config.yaml, checkpoints/, metrics.json, predictions.csv,
wandb/).

Overrides are key=value words, merged in this order: the schema's defaults,
datamodules/<dataset>.yaml, experiments/<method>.yaml, then dotted keys. Examples:
  elta train                                   # built-in data set, vanilla method
  elta train dataset=para method=elta data.root=/data/PARA trainer.devices=4
  elta train optim.lr=1e-4 trainer.max_epochs=5 logger.mode=disabled
  elta train --print-config method=elta        # show the resolved config and exit
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
    return parser


def _summary(title: str, metrics: dict[str, float], where: str) -> str:
    width = max(len(k) for k in metrics) if metrics else 10
    lines = [f"== {title} ==", *(f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items()))]
    lines.append(f"  {where}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``elta`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "train":
            cfg = load_config(args.overrides)
            if args.print_config:
                print(to_yaml(cfg), end="")
                return 0
            from elta_lightning.run import train

            result = train(cfg)
            print(
                _summary(
                    f"{cfg.data.name} / {cfg.method.name}",
                    result.metrics,
                    f"run folder: {result.run_dir}",
                )
            )
        elif args.command == "test":
            from elta_lightning.run import test_checkpoint

            metrics = test_checkpoint(args.checkpoint, args.overrides)
            if args.out:
                with open(args.out, "w") as handle:
                    json.dump(metrics, handle, indent=2, sort_keys=True)
            print(_summary(f"test of {args.checkpoint}", metrics, f"checkpoint: {args.checkpoint}"))
        elif args.command == "predict":
            from elta_lightning.predict import predict_folder

            report = predict_folder(
                args.checkpoint, args.images, args.out, args.batch_size, args.skip_unreadable
            )
            print(report)
    except ConfigError as error:
        print(f"elta: configuration error: {error}", file=sys.stderr)
        print(
            f"  datasets: {available('datamodules')}; methods: {available('experiments')}",
            file=sys.stderr,
        )
        return 2
    except EltaError as error:
        print(f"elta: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
