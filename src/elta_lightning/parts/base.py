"""The one mechanism for long-tail parts: a :class:`Part` is a Lightning callback that the model
builds from its config and returns from ``configure_callbacks()``.

One training step of :class:`~elta_lightning.models.module.IAAModule`, and where parts act::

    batch              = {image, score, dist?, weight, index, views?}     # from the DataModule
    step.weights      *= part.sample_weights(step)        for each part   # LDS, INV, SQINV
    step               = part.transform_inputs(step)      for each part   # C-Mixup on images
    step.features      = backbone(step.images)
    step               = part.transform_features(step)    for each part   # FDS, TFA, C-Mixup
    output             = head(step.features)
    loss               = part.task_loss(step, output)  (at most one part)  # Balanced MSE, Focal-R
                         or the module's EMD / MSE
    loss              += part.auxiliary_loss(step, output) for each part  # FLSA, RankSim, ConR
    epoch start / end:   the part's Lightning callback hooks              # FDS statistics

Parts act in the order of ``method.parts``. A part's buffers and parameters live in its
:attr:`Part.state` module, which the model registers under ``part_states.<name>`` in its
``__init__``, before any optimiser exists: they are in the ``state_dict`` (so checkpoints of any
method reload with their parts), moved to the device with the model, seen by DDP, and in the
optimiser (a part may ask for its own learning rate with :meth:`Part.param_groups`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import nn

from elta_lightning.label_stats import LabelStats
from elta_lightning.resume import per_rank, rank_entry
from elta_lightning.scales import ScoreScale

if TYPE_CHECKING:
    from elta_lightning.models.module import IAAModule

log = logging.getLogger(__name__)

#: Generator seed = stream * STREAM_STRIDE + seed * RANK_STRIDE + global rank (stream 0, TFA's,
#: keeps the seeds of earlier versions).
RANK_STRIDE = 2**16
STREAM_STRIDE = 2**56


@dataclass(frozen=True)
class TrainStep:
    """What flows through one training step.

    ``images`` (B, 3, H, W) until the backbone ran; ``features`` (B, D) pooled features after;
    ``targets`` vote distributions (B, K) for the distribution head or scores on [0, 1] for the
    score head; ``scores`` mean scores on the COMMON 0..10 scale (the one scale every part
    reasons on); ``weights`` per-sample loss weights (B,); ``views`` (B, V, 3, H, W) extra
    augmented views of each image where a part asked for them (ConR), else None.
    """

    images: torch.Tensor | None
    features: torch.Tensor | None
    targets: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    views: torch.Tensor | None = None

    def with_(self, **changes: Any) -> TrainStep:
        """A copy with some fields replaced."""
        return replace(self, **changes)


@dataclass(frozen=True)
class PartContext:
    """What a part may know when it is built: the run's seed, the training label statistics,
    the data set's scale, the head (``distribution`` or ``score``) and the feature width."""

    seed: int
    stats: LabelStats
    scale: ScoreScale
    head_kind: str
    feature_dim: int


class Part(pl.Callback):
    """Base class of every long-tail part. Override only the hooks the method needs.

    Class attributes: :attr:`name` (the key in ``method.parts`` and of its config node
    ``method.<name>``), :attr:`replaces_task_loss` (at most one part of a run may),
    :attr:`weights_samples` (at most one part of a run may, so weights are never applied twice),
    :attr:`views_needed` (extra augmented views of each training image the part reads),
    :attr:`rank_local_buffers` (buffers of :attr:`state` that each process fills with its own
    data, e.g. FDS's epoch sums: DDP must not overwrite them with rank 0's before every
    forward, as it does with every other buffer).
    """

    name: ClassVar[str]
    replaces_task_loss: ClassVar[bool] = False
    weights_samples: ClassVar[bool] = False
    views_needed: ClassVar[int] = 0
    rank_local_buffers: ClassVar[tuple[str, ...]] = ()
    #: which of the run's random streams the part draws from (distinct per random part)
    random_stream: ClassVar[int] = 0

    def __init__(self, config: Any, context: PartContext) -> None:
        self.config = config
        self.context = context
        self.state: nn.Module | None = None
        self._generator: torch.Generator | None = None
        # the generator state a checkpoint held, applied when the generator is next created
        self._restored: dict[str, Any] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # each fit starts the seeded stream afresh, or where a resumed checkpoint left it
        # (Lightning restores callback states, :meth:`load_state_dict`, before this hook)
        self._generator = None

    def generator(self, device: torch.device, rank: int) -> torch.Generator:
        """The part's random generator on ``device``, seeded from the run's seed, the part's
        :attr:`random_stream` and the process's rank (``rank`` 0 on every process gives them all
        the same draws): the same seed repeats a run, DDP processes draw differently. Created
        on first use, on the device of the tensors it draws for; after a resume it continues
        from the state the checkpoint holds (:meth:`state_dict`)."""
        if self._generator is None or self._generator.device != device:
            generator = torch.Generator(device=device)
            stream = self.random_stream * STREAM_STRIDE
            seed = stream + self.context.seed * RANK_STRIDE + rank
            generator.manual_seed(seed)
            restored, self._restored = self._restored, None
            if restored is not None:
                if restored["device"] == device.type:
                    generator.set_state(restored["state"])
                else:
                    log.warning(
                        "part %s: its random stream was saved on %s and resumes on %s: it "
                        "starts again from the seed",
                        self.name,
                        restored["device"],
                        device.type,
                    )
            self._generator = generator
        return self._generator

    # ----- checkpoints (Lightning callback state, under :attr:`state_key`) -----------------------
    def state_dict(self) -> dict[str, Any]:
        """The position of the part's random stream in every process (a collective under DDP,
        as every process saves checkpoints together); empty for a part that has drawn nothing.
        The generator lives on the device, its state is a CPU tensor."""
        if self._generator is not None:
            local = {"state": self._generator.get_state(), "device": self._generator.device.type}
        else:
            local = self._restored  # resumed, not drawn from since: keep the saved position
        entries = per_rank(local)
        return {"generator": entries} if any(e is not None for e in entries) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue this process's random stream from a checkpoint (:meth:`state_dict`)."""
        self._restored = rank_entry(state_dict.get("generator"), f"part {self.name}'s stream")
        self._generator = None

    @property
    def state_key(self) -> str:
        """Unique per part name (several parts may share a class, e.g. ``inv`` and ``lds``)."""
        return f"part:{self.name}"

    # ----- training-step hooks (no host sync, no Python loop over samples) ----------------------
    def sample_weights(self, module: IAAModule, step: TrainStep) -> torch.Tensor | None:
        """Per-sample factors (B,) multiplied into ``step.weights``; None: no change."""
        return None

    def transform_inputs(self, module: IAAModule, step: TrainStep) -> TrainStep:
        """The step before the backbone (``step.images`` set, ``step.features`` None)."""
        return step

    def transform_features(self, module: IAAModule, step: TrainStep) -> TrainStep:
        """The step after the backbone (``step.features`` set)."""
        return step

    def task_loss(self, module: IAAModule, step: TrainStep, output: torch.Tensor) -> torch.Tensor:
        """The loss replacing the module's EMD / MSE (only if :attr:`replaces_task_loss`)."""
        raise NotImplementedError(f"part {self.name!r} does not replace the task loss")

    def auxiliary_loss(
        self, module: IAAModule, step: TrainStep, output: torch.Tensor
    ) -> torch.Tensor | None:
        """A loss added to the task loss, logged as ``train/<name>``; None: none."""
        return None

    # ----- optimisation ------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups with their own settings (e.g. ``{"params": [...], "lr": 1e-2}``).
        Parameters of :attr:`state` not listed here train with the model's settings."""
        return []


def gather_batch(
    module: IAAModule, features: torch.Tensor, *others: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Features (B, D) and per-sample tensors (B, ...) of every process, concatenated in rank
    order, with gradient flowing back to each process's own rows; unchanged on one process."""
    gathered = []
    for tensor in (features, *others):
        full = module.all_gather(tensor, sync_grads=True)
        gathered.append(full.reshape(-1, *tensor.shape[1:]) if full.dim() > tensor.dim() else full)
    return tuple(gathered)
