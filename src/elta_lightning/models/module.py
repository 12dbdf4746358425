"""IAAModule: timm backbone + distribution or score head, trained with EMD or MSE; long-tail
methods are the parts of ``method.parts`` (see :mod:`elta_lightning.parts`), which the module
builds from its config and returns from ``configure_callbacks()``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from elta_lightning.errors import ConfigError
from elta_lightning.label_stats import LabelStats
from elta_lightning.losses import emd_batch_rms, emd_per_sample, mean_score, weighted_mean
from elta_lightning.metrics import IAAMetrics, IndexedCollector, best_so_far
from elta_lightning.models.backbone import Backbone
from elta_lightning.models.heads import DistributionHead, ScoreHead
from elta_lightning.parts import Part, PartContext, TrainStep, build_parts
from elta_lightning.scales import ScoreScale


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
    """The IAA model: backbone, head, task loss, and the long-tail parts of ``method.parts``.

    ``label_stats`` (:meth:`LabelStats.hparams`) are the training labels' statistics that parts
    and the tail metrics use; they are hyper-parameters, so a checkpoint reloads with them and
    with every part's state (``part_states.<name>`` in the state_dict).
    """

    def __init__(
        self,
        config: dict[str, Any],
        scale: dict[str, Any],
        label_stats: dict[str, Any],
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.cfg: DictConfig = OmegaConf.create(config)
        self.scale = ScoreScale(**{**scale, "levels": _as_tuple(scale.get("levels"))})
        self.label_stats = LabelStats.from_hparams(label_stats)
        model_cfg = self.cfg.model
        self.head_kind = resolve_head(model_cfg.head, self.scale)
        pretrained = model_cfg.pretrained if load_pretrained else "none"
        self.backbone = Backbone(model_cfg.backbone, pretrained, model_cfg.drop_path_rate)
        if model_cfg.get("grad_checkpointing"):
            self.backbone.use_grad_checkpointing()
        if model_cfg.get("compile"):
            self.backbone.compile(backend=model_cfg.get("compile_backend", "inductor"))
        if self.head_kind == "distribution":
            self.head = DistributionHead(
                self.backbone.feature_dim, self.scale.num_levels, model_cfg.hidden_dim
            )
            self.register_buffer("levels", self.scale.levels_tensor(), persistent=False)
        else:
            self.head = ScoreHead(self.backbone.feature_dim, model_cfg.score_dropout)
        with_dist = self.head_kind == "distribution"
        cuts, shots = self.label_stats.cuts, self.label_stats.shot_bins()
        self.val_metrics = IAAMetrics(self.scale, cuts, with_dist, shots=shots)
        self.test_metrics = IAAMetrics(self.scale, cuts, with_dist, shots=shots)
        self.val_srcc_best = best_so_far("srcc")
        self.test_predictions = IndexedCollector(["pred", "target"])
        context = PartContext(
            seed=int(self.cfg.seed),
            stats=self.label_stats,
            scale=self.scale,
            head_kind=self.head_kind,
            feature_dim=self.backbone.feature_dim,
        )
        self.parts: list[Part] = build_parts(self.cfg.method, context)
        self.part_states = nn.ModuleDict(
            {part.name: part.state for part in self.parts if part.state is not None}
        )
        # DDP broadcasts rank 0's buffers before every forward; per-process sums must stay local
        self._ddp_params_and_buffers_to_ignore = [
            f"part_states.{part.name}.{buffer}"
            for part in self.parts
            for buffer in part.rank_local_buffers
        ]
        self.backbone_frozen = False
        self.test_prediction_table: dict[str, torch.Tensor] = {}

    def on_fit_start(self) -> None:
        """Speed settings that depend on the device (known once the model is on it):
        channels_last for convolutional backbones on CUDA (``model.channels_last: null``), or as
        ``model.channels_last`` says."""
        wanted = self.cfg.model.get("channels_last")
        if wanted is None:
            wanted = self.device.type == "cuda" and self.backbone.is_convolutional
        if wanted and not self.backbone.channels_last:
            self.backbone.use_channels_last()

    def configure_callbacks(self) -> list[pl.Callback]:
        """The long-tail parts: Lightning runs their epoch hooks in every fit of this module."""
        return list(self.parts)

    # ----- score conversions -------------------------------------------------------------
    def to_unit(self, score: torch.Tensor) -> torch.Tensor:
        """Native score -> the score head's target on [0, 1] (``model.score_target``)."""
        if self.cfg.model.score_target == "over10":
            return score * self.scale.to_common / 10.0
        return (score - self.scale.minimum) / (self.scale.maximum - self.scale.minimum)

    def from_unit(self, unit: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_unit`."""
        if self.cfg.model.score_target == "over10":
            return unit * 10.0 / self.scale.to_common
        return self.scale.minimum + unit * (self.scale.maximum - self.scale.minimum)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Head output of images: logits (B, K) or scores on [0, 1] (B,)."""
        return self.head(self.backbone(images))

    def predict_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Native mean scores (B,) and, for the distribution head, probabilities (B, K)."""
        return self.scores_from_output(self(images))

    def scores_from_output(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.head_kind == "distribution":
            probs = output.softmax(dim=-1)
            return mean_score(probs, self.levels), probs
        return self.from_unit(output), None

    def common_scores(self, output: torch.Tensor) -> torch.Tensor:
        """Predicted mean scores on the common 0..10 scale (B,), differentiable."""
        return self.scores_from_output(output)[0] * self.scale.to_common

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

    def task_loss_per_sample(self, output: torch.Tensor, step: TrainStep) -> torch.Tensor:
        """The task loss of each sample (B,): EMD (r=2) of the distribution head, squared error
        of the score head on its [0, 1] target."""
        if self.head_kind == "distribution":
            return emd_per_sample(output.softmax(dim=-1), step.targets, r=2)
        return (output - step.targets).square()

    def task_loss(self, output: torch.Tensor, step: TrainStep) -> torch.Tensor:
        """The weighted mean of :meth:`task_loss_per_sample` over the batch; with
        ``loss.emd=batch_rms`` the distribution head's loss is instead the ELTA code's one RMS
        over the whole batch (:func:`~elta_lightning.losses.emd_batch_rms`)."""
        if self.head_kind == "distribution" and self.emd_form == "batch_rms":
            return emd_batch_rms(output.softmax(dim=-1), step.targets, r=2, weight=step.weights)
        return weighted_mean(self.task_loss_per_sample(output, step), step.weights)

    @property
    def emd_form(self) -> str:
        """``loss.emd`` (``per_sample`` for checkpoints written before the option existed)."""
        return str(OmegaConf.select(self.cfg, "loss.emd", default="per_sample"))

    def train_step_of(self, batch: dict[str, torch.Tensor]) -> TrainStep:
        """A training batch as the step that parts transform (targets on the head's terms)."""
        targets = (
            batch["dist"] if self.head_kind == "distribution" else self.to_unit(batch["score"])
        )
        return TrainStep(
            images=batch["image"],
            features=None,
            targets=targets,
            scores=batch["score"] * self.scale.to_common,
            weights=batch["weight"],
            views=batch.get("views"),
        )

    def step_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses of one training batch: ``loss`` (the total to minimise) and one entry per
        part that adds an auxiliary loss. The data flow is :mod:`elta_lightning.parts.base`'s."""
        step = self.train_step_of(batch)
        for part in self.parts:
            factors = part.sample_weights(self, step)
            if factors is not None:
                step = step.with_(weights=step.weights * factors.to(step.weights.dtype))
        for part in self.parts:
            step = part.transform_inputs(self, step)
        step = step.with_(features=self.backbone(step.images))
        for part in self.parts:
            step = part.transform_features(self, step)
        output = self.head(step.features)
        replacing = [part for part in self.parts if part.replaces_task_loss]
        if replacing:
            loss = replacing[0].task_loss(self, step, output)
        else:
            loss = self.task_loss(output, step)
        losses = {}
        for part in self.parts:
            auxiliary = part.auxiliary_loss(self, step, output)
            if auxiliary is not None:
                losses[part.name] = auxiliary
        return {"loss": loss + sum(losses.values()), **losses}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self.step_losses(batch)
        self._log_losses(losses, batch["image"].shape[0])
        return losses["loss"]

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
        self.test_predictions.update(batch["index"], pred=scores, target=batch["score"])

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.test_predictions.reset()

    def on_test_epoch_end(self) -> None:
        results = self.test_metrics.compute()
        self.test_prediction_table = self.test_predictions.compute()
        for key, value in results.items():
            self.log(f"test/{key}", value, sync_dist=True)

    def predict_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        output = self(batch["image"])
        scores, probs = self.scores_from_output(output)
        out = {"index": batch["index"], "score": scores}
        if probs is not None:
            out["dist"] = probs
            out["logits"] = output  # for pseudo-label sharpening (APDS)
        return out

    # ----- optimisation --------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optim = self.cfg.optim
        part_groups = [group for part in self.parts for group in part.param_groups()]
        own = {id(p) for group in part_groups for p in group["params"]}
        main = [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        params = [{"params": main}, *part_groups]
        if optim.name == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
            )
        else:
            factory = torch.optim.AdamW if optim.name == "adamw" else torch.optim.Adam
            fused = self.device.type == "cuda"  # one kernel per step instead of one per tensor
            optimizer = factory(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)
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
