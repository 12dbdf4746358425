"""Two epochs of an IAAModule with the FDS part (``method.parts=[fds]``) in a real Lightning fit.

Used by ``test_ddp_fds.py`` as a subprocess (its own process: a fresh port and process group,
no interference with other Trainers in the pytest process):

    python tests/distributed/ddp_fds_run.py OUT_DIR

runs ``trainer.fit`` for 2 epochs on CPU three times: with 2 processes (``strategy="ddp_fork"``,
gloo), with 1 process, and with 2 processes where ``FDSState.reduce_epoch`` is replaced by a
no-op (a mutant: what the statistics would be without the all-reduce). The code path is the
real one: ``method.parts=[fds]`` -> ``build_parts`` -> the part registered in ``part_states.fds``
and returned by ``configure_callbacks`` -> ``IAAModule.training_step`` ->
``FeatureDistributionSmoothing.transform_features`` (collects every step's features, calibrates
from epoch 1 on) -> the part's ``on_train_epoch_end`` (``reduce_epoch`` + ``update``).

The statistics depend only on the data: the IAAModule's backbone is replaced by a
parameter-free module that returns fixed features, ``FEATURES[epoch, i]`` for dataset row ``i``
(the "image" of row ``i`` carries both epochs' features; a callback tells the backbone the
epoch), so the single-process run sees exactly the features the two ranks see together. Each
rank trains on its share of the N = 16 rows (``DistributedSampler`` without shuffle,
``drop_last=True``, as the data modules do) in 2 steps of 4 rows per epoch; the single-process
run takes all 16 rows in 4 steps of 4. Labels are binned with width 1 (10 bins on TAD66K's
1..10 scale); some bins hold rows of both ranks, some of one rank only, two bins a single row.

Every rank writes ``OUT_DIR/<run>/rank<global rank>.json``: per epoch, the dataset indices of
its steps, its LOCAL epoch sums just before the part's ``on_train_epoch_end`` (``epoch_count``,
``epoch_sum``, ``epoch_sum_sq``, i.e. before the all-reduce) and every buffer of
``part.state`` after the update. ``OUT_DIR/data.json`` holds the features, scores and settings.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import OmegaConf
from rank_shares import RankShares
from torch import Tensor, nn
from torch.utils.data import Dataset

from elta_lightning.config import load_config
from elta_lightning.label_stats import LabelStats
from elta_lightning.models.module import IAAModule, scale_hparams
from elta_lightning.parts import FeatureDistributionSmoothing
from elta_lightning.parts.fds import FDSState
from elta_lightning.scales import TAD66K_SCALE

SEED = 20240611
WORLD = 2
STEPS = 2  # training steps per epoch of each rank
BATCH = 4
NUM_SAMPLES = WORLD * STEPS * BATCH
EPOCHS = 2
BIN_WIDTH = 1.0  # on the common scale; TAD66K's to_common is 1: 10 bins, bin = floor(score)
#: Rank 0 gets the even rows (bins 2 4 5 5 5 6 4 6), rank 1 the odd ones (7 5 4 6 7 5 8 6):
#: bins 4, 5, 6 on both ranks, 2 on rank 0 only (one row), 7 and 8 on rank 1 only (8: one row).
SCORES = [2.3, 7.1, 4.1, 5.2, 5.0, 4.4, 5.5, 6.0, 5.9, 7.7, 6.2, 5.6, 4.6, 8.4, 6.8, 6.5]
BUFFERS = [
    "kernel",
    "running_mean",
    "running_var",
    "smoothed_mean",
    "smoothed_var",
    "updates",
    "epoch_count",
    "epoch_sum",
    "epoch_sum_sq",
]
LOCAL = ["epoch_count", "epoch_sum", "epoch_sum_sq"]


def make_config():
    return load_config(
        [
            "method=vanilla",
            "method.parts=[fds]",
            "model.backbone=test_convnext",
            "model.pretrained=none",
            "optim.name=sgd",
            "optim.scheduler=none",
        ]
    )


def make_data(dim: int) -> dict[str, Tensor]:
    """Features (EPOCHS, N, dim): a per-bin offset plus noise, different in every epoch."""
    gen = torch.Generator().manual_seed(SEED)
    scores = torch.tensor(SCORES, dtype=torch.float32)
    bins = torch.floor(scores / BIN_WIDTH).long()
    offsets = 0.5 * bins.float()[:, None] + 0.3 * torch.randn(10, dim, generator=gen)[bins]
    spread = torch.tensor([1.0, 0.6])[:, None, None]
    noise = torch.randn(EPOCHS, NUM_SAMPLES, dim, generator=gen)
    shift = torch.tensor([0.0, 0.4])[:, None, None]
    return {"features": offsets[None] + shift + spread * noise, "score": scores}


class Rows(Dataset):
    def __init__(self, data: dict[str, Tensor]) -> None:
        self.features, self.score = data["features"], data["score"]

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, i: int) -> dict[str, Tensor | int]:
        image = self.features[:, i]  # (EPOCHS, D): the backbone picks the current epoch's row
        return {"index": i, "image": image, "score": self.score[i], "weight": torch.tensor(1.0)}


class EpochFeatures(nn.Module):
    """Parameter-free backbone: returns the current epoch's fixed features of each row."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0

    def forward(self, images: Tensor) -> Tensor:
        return images[:, self.epoch].clone()


def make_module(data: dict[str, Tensor]) -> IAAModule:
    stats = LabelStats.from_scores(data["score"], TAD66K_SCALE.to_common, bin_width=BIN_WIDTH)
    module = IAAModule(
        config=OmegaConf.to_container(make_config(), resolve=True),
        scale=scale_hparams(TAD66K_SCALE),
        label_stats=stats.hparams(),
        load_pretrained=False,
    )
    assert module.head_kind == "score"
    module.backbone = EpochFeatures()
    return module


def fds_part(module: IAAModule) -> FeatureDistributionSmoothing:
    (part,) = [p for p in module.parts if isinstance(p, FeatureDistributionSmoothing)]
    assert module.part_states["fds"] is part.state
    return part


def listed(tensor: Tensor) -> list | int:
    return tensor.detach().cpu().tolist()


class Recorder(pl.Callback):
    """Per epoch: the rows of each step, the part's local sums before its epoch-end hook (this
    callback is a Trainer callback, so Lightning runs its hooks before the model's callbacks)
    and every buffer of ``part.state`` after the update (read at the next epoch's start and at
    the end of training)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.epochs: list[dict] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: IAAModule) -> None:
        names = [type(c).__name__ for c in trainer.callbacks]
        assert names.index("Recorder") < names.index("FeatureDistributionSmoothing"), names
        assert sorted(name for name, _ in fds_part(pl_module).state.named_buffers()) == sorted(
            BUFFERS
        )

    def _record_state(self, pl_module: IAAModule) -> None:
        state = fds_part(pl_module).state
        self.epochs[-1]["state"] = {name: listed(b) for name, b in state.named_buffers()}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: IAAModule) -> None:
        if self.epochs:
            self._record_state(pl_module)
        pl_module.backbone.epoch = trainer.current_epoch
        self.epochs.append({"epoch": trainer.current_epoch, "steps": []})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        assert torch.isfinite(outputs["loss"])
        self.epochs[-1]["steps"].append(listed(batch["index"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: IAAModule) -> None:
        state = fds_part(pl_module).state
        self.epochs[-1]["local"] = {name: listed(getattr(state, name)) for name in LOCAL}

    def on_train_end(self, trainer: pl.Trainer, pl_module: IAAModule) -> None:
        self._record_state(pl_module)
        report = {
            "world_size": trainer.world_size,
            "global_rank": trainer.global_rank,
            "strategy": type(trainer.strategy).__name__,
            "config": vars(fds_part(pl_module).config),
            "epochs": self.epochs,
        }
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(report))


def run(out_dir: Path, devices: int, data: dict[str, Tensor]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        use_distributed_sampler=False,
        max_epochs=EPOCHS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Recorder(out_dir)],
    )
    trainer.fit(make_module(data), datamodule=RankShares(Rows(data), lambda world: BATCH))


def main(out_dir: Path) -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*val_dataloader.*")
    data = make_data(feature_dim())
    out_dir.mkdir(parents=True, exist_ok=True)
    dump = {k: v.tolist() for k, v in data.items()}
    (out_dir / "data.json").write_text(json.dumps({**dump, "bin_width": BIN_WIDTH}))
    run(out_dir / "ddp2", WORLD, data)
    run(out_dir / "single", 1, data)
    reduce_epoch = FDSState.reduce_epoch
    FDSState.reduce_epoch = lambda self: None  # the mutant: no all-reduce (inherited by forks)
    try:
        run(out_dir / "ddp2_no_reduce", WORLD, data)
    finally:
        FDSState.reduce_epoch = reduce_epoch


def feature_dim() -> int:
    """The width of the FDS statistics: the configured backbone's (test_convnext) feature width."""
    scores = {"score": torch.tensor(SCORES)}
    return fds_part(make_module(scores)).state.running_mean.shape[1]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(Path(sys.argv[1]))
