"""One training step of an IAAModule with FLSA (the ``flsa`` part) in a real Lightning fit.

Used by ``test_ddp_flsa_gather.py`` as a subprocess (its own process: a fresh port and process
group, no interference with other Trainers in the pytest process):

    python tests/distributed/ddp_flsa_run.py OUT_DIR

runs ``trainer.fit`` for one step on CPU three times: with 2 processes (``strategy="ddp_fork"``,
gloo) and ``method.flsa.gather=true``, with 2 processes and ``gather=false``, and with 1 process
and ``gather=true``. The code path is the real one: the config's ``method.parts=[flsa]`` and
``method.flsa`` node -> the ``SimilarityAlignment`` part the module builds and returns from
``configure_callbacks()`` -> ``IAAModule.training_step`` -> ``module.all_gather(...,
sync_grads=True)`` -> ``flsa_loss``.

To make the gradients checkable, the IAAModule's backbone is replaced by a bias-free linear map
``features = images @ W.T`` (``W``, of shape (D, D_IN), is the only parameter: the same on every
rank, kept in sync by DDP) and its head by a parameter-free head that predicts 0, so the task
loss is a constant without gradient and ``W.grad`` is the gradient of the FLSA term alone.
The "images" are fixed rows ``X`` (N, D_IN); each rank trains on its share of N / world rows
(``DistributedSampler`` without shuffle, ``drop_last=True``, as the data modules do).

Every rank writes ``OUT_DIR/<run>/rank<global rank>.json``: the dataset indices of its batch,
the logged FLSA term, its features, the gradient of its (local) features and ``W.grad`` after
backward (that is after DDP's all-reduce). ``OUT_DIR/data.json`` holds ``X``, ``W`` and scores.
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
from elta_lightning.scales import TAD66K_SCALE

SEED = 20240607
WORLD = 2
PER_RANK = 5  # B: the batch of one rank
NUM_SAMPLES = WORLD * PER_RANK
D_IN, D = 6, 8
#: Scores (native = common 0..10 scale for TAD66K) with ties within and across ranks. Rank 0
#: gets the even indices (3, 5.5, 4, 2, 4: range 3.5), rank 1 the odd ones (5.5, 7, 5.5, 8.5, 4:
#: range 4.5); the whole batch has range 6.5, so the per-rank losses differ from the global one.
SCORES = [3.0, 5.5, 5.5, 7.0, 4.0, 5.5, 2.0, 8.5, 4.0, 4.0]


def make_data() -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    return {
        "x": torch.randn(NUM_SAMPLES, D_IN, generator=gen),
        "w": torch.randn(D, D_IN, generator=gen),
        "score": torch.tensor(SCORES, dtype=torch.float32),
    }


class Rows(Dataset):
    def __init__(self, data: dict[str, Tensor]) -> None:
        self.x, self.score = data["x"], data["score"]

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, i: int) -> dict[str, Tensor | int]:
        return {"index": i, "image": self.x[i], "score": self.score[i], "weight": torch.tensor(1.0)}


class ZeroHead(nn.Module):
    """Predicts 0 for every sample: the task loss is a constant, with no gradient."""

    def forward(self, features: Tensor) -> Tensor:
        return features.new_zeros(features.shape[0])


def make_module(data: dict[str, Tensor], gather: bool) -> IAAModule:
    cfg = load_config(
        [
            "method=vanilla",
            "parts=flsa",
            "method.flsa.weight=1.0",
            f"method.flsa.gather={str(gather).lower()}",
            "model.backbone=test_convnext",
            "model.pretrained=none",
            "optim.name=sgd",
            "optim.scheduler=none",
        ]
    )
    module = IAAModule(
        config=OmegaConf.to_container(cfg, resolve=True),
        scale=scale_hparams(TAD66K_SCALE),
        label_stats=LabelStats.from_scores(data["score"], TAD66K_SCALE.to_common).hparams(),
        load_pretrained=False,
    )
    backbone = nn.Linear(D_IN, D, bias=False)
    with torch.no_grad():
        backbone.weight.copy_(data["w"])
    module.backbone = backbone
    module.head = ZeroHead()
    assert module.head_kind == "score"
    return module


class Recorder(pl.Callback):
    """Keeps the backbone's output (features) of the training step and its gradient, ``W.grad``
    after backward (after DDP's all-reduce, before the optimizer step) and what was logged."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.features: Tensor | None = None
        self.report: dict = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        def keep(layer: nn.Module, args: tuple, output: Tensor) -> None:
            output.retain_grad()
            self.features = output

        pl_module.backbone.register_forward_hook(keep)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.features is not None and self.features.grad is not None
        self.report["features"] = self.features.detach().tolist()
        self.report["features_grad"] = self.features.grad.tolist()
        self.report["w_grad"] = pl_module.backbone.weight.grad.tolist()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.report["index"] = batch["index"].tolist()
        self.report["train_loss"] = float(outputs["loss"])
        self.report["parts"] = [part.name for part in pl_module.parts if part in trainer.callbacks]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.report["flsa"] = float(trainer.callback_metrics["train/flsa"])
        self.report["world_size"] = trainer.world_size
        self.report["global_rank"] = trainer.global_rank
        self.report["strategy"] = type(trainer.strategy).__name__
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.report))


def run(out_dir: Path, devices: int, gather: bool, data: dict[str, Tensor]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    module = make_module(data, gather)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_fork" if devices > 1 else "auto",
        use_distributed_sampler=False,
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Recorder(out_dir)],
    )
    trainer.fit(module, datamodule=RankShares(Rows(data), lambda world: NUM_SAMPLES // world))


def main(out_dir: Path) -> None:
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    data = make_data()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "data.json").write_text(json.dumps({k: v.tolist() for k, v in data.items()}))
    run(out_dir / "ddp2_gather", WORLD, True, data)
    run(out_dir / "ddp2_local", WORLD, False, data)
    run(out_dir / "single_gather", 1, True, data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUT_DIR")
    main(Path(sys.argv[1]))
