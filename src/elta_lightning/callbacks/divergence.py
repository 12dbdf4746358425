"""Stop a diverging run: a NaN or infinite training loss ends the fit with a clear message naming
the first bad step and the last good checkpoint, instead of training on NaN for hours.

Reading the loss on the host every step would stall the GPU pipeline, so the callback keeps a
device-side record (the first global step whose loss was not finite, or -1) and reads it every
``check_every`` steps and at the end of each epoch: one host sync per ``check_every`` steps.
Under DDP the record is reduced over processes (max), so every process stops at the same check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from elta_lightning.errors import EltaError


class DivergenceError(EltaError, RuntimeError):
    """The training loss became NaN or infinite."""


class DivergenceGuard(pl.Callback):
    """Raises :class:`DivergenceError` once a training loss was not finite (see module doc)."""

    def __init__(self, check_every: int = 50, checkpoint_dir: Path | None = None) -> None:
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.check_every = check_every
        self.checkpoint_dir = checkpoint_dir
        self.first_bad: torch.Tensor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=pl_module.device)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        index: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self.first_bad is None:
            return
        bad = ~torch.isfinite(loss.detach())
        step = torch.full_like(self.first_bad, trainer.global_step)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        if (index + 1) % self.check_every == 0:
            self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        flag = trainer.strategy.reduce(self.first_bad.clone(), reduce_op="max")
        step = int(flag)
        if step < 0:
            return
        raise DivergenceError(
            f"training diverged: the loss was NaN or infinite at step {step} (epoch "
            f"{trainer.current_epoch}); last good checkpoint: {self._last_good()}. Lower "
            "optim.lr, set trainer.gradient_clip_val, or check the inputs of that step."
        )

    def _last_good(self) -> str:
        if self.checkpoint_dir is None:
            return "none kept"
        found = sorted(self.checkpoint_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        return str(found[-1]) if found else "none written yet"
