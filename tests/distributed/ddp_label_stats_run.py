"""Label statistics of a tiny synthetic run, computed independently on each of 2 processes.

Used by ``test_ddp_label_stats.py`` as a subprocess:

    python tests/distributed/ddp_label_stats_run.py OUT_DIR

forks 2 processes that join one gloo process group (``torch.distributed``, file rendezvous
under OUT_DIR). Each process does what every rank of a ``strategy=ddp`` run of ``elta train``
does before its Trainer starts (``run.train``): build the data module of the tiny built-in
synthetic data set (``tiny_run_overrides``; a fresh cache folder, so the two processes generate
it concurrently, one waiting on the other's lock), ``prepare_data``, ``setup("fit")``, and
``run.build_module``, which computes ``LabelStats.from_scores`` from the training labels
(``run.label_stats_of``) and stores it in the module's hyper-parameters. Each process then reads
the statistics back from its module: the ``label_stats`` hyper-parameters (what a checkpoint
keeps), the region cuts and shot regions of its test metrics. It also computes, for contrast,
the statistics of only its ``DistributedSampler``-style share of the training labels (rows
``rank::2``), which is what a rank would get from its shard.

The reports are all-gathered (``all_gather_object``); rank 0 checks that every rank's statistics
equal its own and writes ``OUT_DIR/gathered.json`` (the gathered reports and the verdict);
every rank writes ``OUT_DIR/rank<rank>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_runs

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from tiny_runs import tiny_run_overrides  # noqa: E402

from elta_lightning.config import load_config  # noqa: E402
from elta_lightning.datamodules import build_datamodule  # noqa: E402
from elta_lightning.label_stats import LabelStats  # noqa: E402
from elta_lightning.run import build_module  # noqa: E402

WORLD = 2
#: What every rank must agree on (the shard statistics are expected to differ).
SHARED_KEYS = ("label_stats", "cuts", "shot_of_bin", "num_train_rows", "folder")


def rank_report(overrides: list[str], rank: int) -> dict:
    cfg = load_config(overrides)
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    stats = module.label_stats
    assert LabelStats.from_hparams(module.hparams["label_stats"]) == stats
    shard = datamodule.train_scores()[rank::WORLD]
    options = cfg.data.label_stats
    shard_stats = LabelStats.from_scores(
        shard,
        datamodule.scale.to_common,
        bin_width=options.bin_width,
        many_share=options.many_share,
        few_share=options.few_share,
    )
    return {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "label_stats": dict(module.hparams["label_stats"]),
        "cuts": list(module.test_metrics.cuts),
        "shot_of_bin": list(module.test_metrics.shots.shot_of_bin),
        "num_train_rows": len(datamodule.tables["train"]),
        "folder": str(datamodule.folder),
        "shard_label_stats": shard_stats.hparams(),
    }


def worker(rank: int, out_dir: Path, overrides: list[str]) -> None:
    torch.set_num_threads(1)
    init = f"file://{out_dir / 'rendezvous'}"
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        report = rank_report(overrides, rank)
        (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
        gathered: list[dict | None] = [None] * WORLD
        dist.all_gather_object(gathered, report)
        if rank == 0:
            identical = {
                key: all(other[key] == report[key] for other in gathered) for key in SHARED_KEYS
            }
            verdict = {"gathered": gathered, "identical": identical}
            (out_dir / "gathered.json").write_text(json.dumps(verdict))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = [*tiny_run_overrides(out_dir / "synthetic-cache", out_dir / "runs")]
    overrides.append("trainer.devices=2")
    mp.start_processes(worker, args=(out_dir, overrides), nprocs=WORLD, start_method="fork")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(Path(sys.argv[1]))
