"""IAAModule: timm backbone + distribution or score head, trained with EMD or MSE, with plug-in
points for long-tail methods (feature transforms, auxiliary losses)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from elta_lightning.config import ConfigError
from elta_lightning.losses import emd_loss, mse_loss
from elta_lightning.metrics import IAAMetrics, PredictionCollector, best_so_far
from elta_lightning.models.backbone import Backbone
from elta_lightning.models.heads import DistributionHead, ScoreHead
from elta_lightning.scales import ScoreScale


@dataclass(frozen=True)
class TrainBatch:
    """What flows from the backbone to the head in a training step.

    ``targets`` are vote distributions (B, K) for the distribution head, or scores normalised to
    [0, 1] for the score head; ``scores`` are the mean scores on the common 0..10 scale (the one
    scale every long-tail part reasons on); ``weights`` are per-sample loss weights.
    """

    features: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor


FeatureTransform = Callable[["IAAModule", TrainBatch], TrainBatch]
AuxiliaryLoss = Callable[["IAAModule", TrainBatch, torch.Tensor], torch.Tensor]


def resolve_head(head: str, scale: ScoreScale) -> str:
    """``auto`` -> distribution where the data has rating levels, score otherwise."""
    if head == "auto":
        return "distribution" if scale.has_levels else "score"
    if head == "distribution" and not scale.has_levels:
        raise ConfigError(
            "model.head=distribution needs vote distributions, but this data set has scalar "
            "scores only: use model.head=score (or auto)"
        )
    return head


class IAAModule(pl.LightningModule):
    """The vanilla IAA model; long-tail methods attach through :attr:`feature_transforms`
    (applied to pooled features in training steps, e.g. TFA) and :attr:`auxiliary_losses`
    (added to the task loss, e.g. FLSA). Each auxiliary loss is logged as ``train/<name>``."""

    def __init__(
        self,
        config: dict[str, Any],
        scale: dict[str, Any],
        region_cuts: tuple[float, float],
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.cfg: DictConfig = OmegaConf.create(config)
        self.scale = ScoreScale(**{**scale, "levels": _as_tuple(scale.get("levels"))})
        model_cfg = self.cfg.model
        self.head_kind = resolve_head(model_cfg.head, self.scale)
        pretrained = model_cfg.pretrained if load_pretrained else "none"
        self.backbone = Backbone(model_cfg.backbone, pretrained, model_cfg.drop_path_rate)
        if self.head_kind == "distribution":
            self.head = DistributionHead(
                self.backbone.feature_dim, self.scale.num_levels, model_cfg.hidden_dim
            )
            self.register_buffer("levels", self.scale.levels_tensor(), persistent=False)
        else:
            self.head = ScoreHead(self.backbone.feature_dim, model_cfg.score_dropout)
        with_dist = self.head_kind == "distribution"
        self.val_metrics = IAAMetrics(self.scale, tuple(region_cuts), with_dist)
        self.test_metrics = IAAMetrics(self.scale, tuple(region_cuts), with_dist)
        self.val_srcc_best = best_so_far("srcc")
        self.test_predictions = PredictionCollector()
        self.feature_transforms: dict[str, FeatureTransform] = {}
        self.auxiliary_losses: dict[str, AuxiliaryLoss] = {}
        self.backbone_frozen = False
        self.test_results: dict[str, float] = {}
        self.test_prediction_table: dict[str, torch.Tensor] = {}

    # ----- score conversions -------------------------------------------------------------
    def to_unit(self, score: torch.Tensor) -> torch.Tensor:
        """Native score -> [0, 1] over the data set's range (the score head's target)."""
        return (score - self.scale.minimum) / (self.scale.maximum - self.scale.minimum)

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        return self.scale.minimum + unit * (self.scale.maximum - self.scale.minimum)

    def predict_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Native mean scores (B,) and, for the distribution head, probabilities (B, K)."""
        return self.scores_from_output(self.head(self.backbone(images)))

    def scores_from_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.head_kind == "distribution":
            probs = output.softmax(dim=-1)
            return probs @ self.levels, probs
        return self.from_unit(output), None

    # ----- training ------------------------------------------------------------------------
    def freeze_backbone(self) -> None:
        """Train the head only (RRT). The frozen backbone stays in eval mode: BatchNorm
        statistics and dropout do not change while the head is re-trained."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone.eval()

    def train(self, mode: bool = True) -> IAAModule:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def task_loss(self, output: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        if self.head_kind == "distribution":
            return emd_loss(output.softmax(dim=-1), batch.targets, r=2, weight=batch.weights)
        return mse_loss(output, batch.targets, weight=batch.weights)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step = TrainBatch(
            features=self.backbone(batch["image"]),
            targets=batch["dist"]
            if self.head_kind == "distribution"
            else self.to_unit(batch["score"]),
            scores=batch["score"] * self.scale.to_common,
            weights=batch["weight"],
        )
        for transform in self.feature_transforms.values():
            step = transform(self, step)
        output = self.head(step.features)
        loss = self.task_loss(output, step)
        losses = {
            name: auxiliary(self, step, output) for name, auxiliary in self.auxiliary_losses.items()
        }
        loss = loss + sum(losses.values())
        self._log_losses({"loss": loss, **losses}, batch["image"].shape[0])
        return loss

    def _log_losses(self, losses: dict[str, torch.Tensor], size: int) -> None:
        """``train/<name>`` every step and ``train/<name>_epoch`` as the epoch's mean."""
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, prog_bar=name == "loss", batch_size=size)
            self.log(f"train/{name}_epoch", value, on_step=False, on_epoch=True, batch_size=size)

    # ----- evaluation ----------------------------------------------------------------------
    def _evaluate(self, batch: dict[str, torch.Tensor], metrics: IAAMetrics) -> torch.Tensor:
        scores, probs = self.predict_scores(batch["image"])
        metrics.update(scores, batch["score"], probs, batch.get("dist"))
        return scores

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metrics.reset()
            return
        results = self.val_metrics.compute()
        self.val_metrics.reset()
        self.val_srcc_best.update(results["srcc"])
        results["srcc_best"] = self.val_srcc_best.compute()
        for key, value in results.items():
            self.log(f"val/{key}", value, prog_bar=key in ("srcc", "srcc_best"), sync_dist=True)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        scores = self._evaluate(batch, self.test_metrics)
        self.test_predictions.update(batch["index"], scores, batch["score"])

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_predictions.reset()

    def on_test_epoch_end(self) -> None:
        results = self.test_metrics.compute()
        self.test_prediction_table = self.test_predictions.compute()
        self.test_results = {f"test/{k}": float(v) for k, v in results.items()}
        for key, value in results.items():
            self.log(f"test/{key}", value, sync_dist=True)

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        output = self.head(self.backbone(batch["image"]))
        scores, probs = self.scores_from_output(output)
        out = {"index": batch["index"], "score": scores}
        if probs is not None:
            out["dist"] = probs
            out["logits"] = output  # for pseudo-label sharpening (APDS)
        return out

    # ----- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optim = self.cfg.optim
        params = [p for p in self.parameters() if p.requires_grad]
        if optim.name == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
            )
        else:
            factory = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
            optimizer = factory(params, lr=optim.lr, weight_decay=optim.weight_decay)
        if optim.scheduler == "none":
            return optimizer
        if optim.scheduler == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, self.trainer.max_epochs), eta_min=optim.min_lr
            )
        else:
            scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer, step_size=optim.step_size, gamma=optim.gamma
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }


def _as_tuple(levels: Any) -> tuple[float, ...] | None:
    return None if levels is None else tuple(float(v) for v in levels)


def scale_hparams(scale: ScoreScale) -> dict[str, Any]:
    """A plain dict of a scale, for checkpoint hyper-parameters."""
    values = asdict(scale)
    values["levels"] = None if scale.levels is None else list(scale.levels)
    return values
