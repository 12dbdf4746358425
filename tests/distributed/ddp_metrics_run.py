"""Evaluate fixed predictions with IAAMetrics + IndexedCollector in a real Lightning test loop.

Used by ``test_ddp_metrics.py`` as a subprocess (its own process: a fresh port and process group,
no interference with other Trainers in the pytest process):

    python tests/distributed/ddp_metrics_run.py OUT_DIR

runs ``trainer.test`` twice on CPU: with 2 processes (``strategy="ddp_fork"``, gloo) and with 1
process, on an evaluation set of 101 samples (not divisible by 2), with
``UnrepeatedDistributedSampler`` and ``use_distributed_sampler=False``. Every rank writes
``OUT_DIR/<run>/rank<global rank>.json`` (the metrics it computed, the samples it evaluated, the
collected predictions); the launching process writes ``OUT_DIR/<run>/main.json`` with the
Trainer's ``callback_metrics``; ``OUT_DIR/data.json`` holds the data and predictions used, the
region cuts and the shot-region setup.

The targets stand in for the training labels too (as for the region cuts): ``LabelStats`` of the
targets, with bins of width 0.5 and shot shares 0.1 / 0.05, give the ``ShotBins`` that
``IAAMetrics(shots=...)`` reports mae_many / mae_medium / mae_few / mae_balanced with (the
IAAModule's own path: ``label_stats.shot_bins()``).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from elta_lightning.label_stats import LabelStats
from elta_lightning.losses import mean_score
from elta_lightning.metrics import IAAMetrics, IndexedCollector, ShotBins, region_cuts
from elta_lightning.scales import AVA_SCALE

NUM_SAMPLES = 101
SEED = 1234
BATCH_SIZE = 10  # rank 0 gets 51 samples (6 batches), rank 1 gets 50 (5 batches)
#: Shot regions: bins of 0.5 on the common scale (one target value of the 0.5 grid per bin);
#: many-shot: >= 10 % of the labels (11 of 101), few-shot: < 5 % (6 of 101).
SHOT_BIN_WIDTH, MANY_SHARE, FEW_SHARE = 0.5, 0.1, 0.05


def make_data() -> dict[str, Tensor]:
    """Deterministic targets and predictions with ties (targets on a 0.5 grid, preds on 0.25)."""
    gen = torch.Generator().manual_seed(SEED)
    levels = AVA_SCALE.levels_tensor()
    index = torch.arange(NUM_SAMPLES, dtype=torch.float32)
    target_logits = 1.5 * torch.randn(NUM_SAMPLES, 10, generator=gen)
    target_dist = torch.softmax(target_logits, dim=1)
    target_score = torch.round(mean_score(target_dist, levels) * 2) / 2
    noise = 0.6 * torch.randn(NUM_SAMPLES, generator=gen)
    pred_score = torch.round((target_score + 0.4 * torch.sin(index) + noise) * 4) / 4
    pred_dist = torch.softmax(target_logits + torch.randn(NUM_SAMPLES, 10, generator=gen), dim=1)
    return {
        "target_score": target_score,
        "target_dist": target_dist,
        "pred_score": pred_score,
        "pred_dist": pred_dist,
    }


class EvalSet(Dataset):
    def __init__(self, data: dict[str, Tensor]) -> None:
        self.target_score = data["target_score"]
        self.target_dist = data["target_dist"]

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, i: int) -> dict[str, Tensor | int]:
        return {"index": i, "score": self.target_score[i], "dist": self.target_dist[i]}


class FixedPredictions(pl.LightningModule):
    """Looks its predictions up by dataset index; feeds them to IAAMetrics and the collector."""

    def __init__(
        self,
        out_dir: Path,
        data: dict[str, Tensor],
        cuts: tuple[float, float],
        shots: ShotBins,
    ) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.data = data
        self.layer = nn.Linear(1, 1)  # a parameter, as every real model has
        self.register_buffer("pred_score", data["pred_score"].clone())
        self.register_buffer("pred_dist", data["pred_dist"].clone())
        self.test_metrics = IAAMetrics(AVA_SCALE, cuts, with_distribution=True, shots=shots)
        self.test_predictions = IndexedCollector(["pred", "target"])  # as IAAModule's
        self.seen: list[int] = []

    def test_dataloader(self) -> DataLoader:
        dataset = EvalSet(self.data)
        sampler = UnrepeatedDistributedSampler(
            dataset,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=False,
        )
        return DataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=0)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        index = batch["index"]
        pred_score, pred_dist = self.pred_score[index], self.pred_dist[index]
        self.test_metrics.update(pred_score, batch["score"], pred_dist, batch["dist"])
        self.test_predictions.update(index, pred=pred_score, target=batch["score"])
        self.seen.extend(index.tolist())  # test bookkeeping only

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        collected = self.test_predictions.compute()
        self.log_dict({f"test/{k}": v for k, v in values.items()})
        report = {
            "world_size": self.trainer.world_size,
            "global_rank": self.trainer.global_rank,
            "seen": self.seen,
            "metrics": {k: float(v) for k, v in values.items()},
            "collector": {k: v.tolist() for k, v in collected.items()},
        }
        path = self.out_dir / f"rank{self.trainer.global_rank}.json"
        path.write_text(json.dumps(report))
        self.test_metrics.reset()
        self.test_predictions.reset()


def run(
    out_dir: Path,
    devices: int,
    data: dict[str, Tensor],
    cuts: tuple[float, float],
    shots: ShotBins,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(FixedPredictions(out_dir, data, cuts, shots), verbose=False)
    main = {k: float(v) for k, v in trainer.callback_metrics.items()}
    (out_dir / "main.json").write_text(json.dumps({"callback_metrics": main}))


def main(out_dir: Path) -> None:
    # the logged values are already synced by torchmetrics; Lightning's hint does not apply
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    data = make_data()
    cuts = region_cuts(data["target_score"])  # on a 0.5 grid: targets lie exactly on the cuts
    stats = LabelStats.from_scores(
        data["target_score"],
        AVA_SCALE.to_common,
        bin_width=SHOT_BIN_WIDTH,
        many_share=MANY_SHARE,
        few_share=FEW_SHARE,
    )
    shots = stats.shot_bins()
    out_dir.mkdir(parents=True, exist_ok=True)
    dump = {k: v.tolist() for k, v in data.items()}
    setup = {
        "bin_width": shots.bin_width,
        "shot_of_bin": list(shots.shot_of_bin),
        "many_share": MANY_SHARE,
        "few_share": FEW_SHARE,
    }
    (out_dir / "data.json").write_text(json.dumps({**dump, "cuts": list(cuts), "shots": setup}))
    run(out_dir / "ddp2", 2, data, cuts, shots)
    run(out_dir / "single", 1, data, cuts, shots)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(Path(sys.argv[1]))
