"""End every process of a run when one fails, instead of leaving the others waiting in a
collective until its timeout (30 minutes by default; NCCL does not notice a dead peer).

Who ends whom:
- a process that Lightning launched (rank > 0) fails: Lightning's child-process observer in
  rank 0 sees its exit code within 5 s and kills the whole group;
- rank 0 of a Lightning-launched run fails: :class:`StopLaunchedRanks` kills the processes it
  launched (Lightning itself does so only on Ctrl-C);
- torchrun: its agent stops the other workers when one exits non-zero; SLURM: ``srun
  --kill-on-bad-exit=1`` (in the README's sbatch script).

The failing process records its error in the run's status.json first
(:func:`elta_lightning.runs.write_failure`), so the folder names the cause, not the
consequence.
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StopLaunchedRanks(pl.Callback):
    """On an exception in rank 0, kill the processes Lightning launched for the other ranks.

    Not on a stop signal (SIGTERM / SIGUSR1, :class:`~elta_lightning.resume.Preemption`): then
    every rank is saving the same checkpoint in step and ends by itself."""

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        launcher = trainer.strategy.launcher
        if trainer.is_global_zero and isinstance(launcher, _SubprocessScriptLauncher):
            launcher.kill(_get_sigkill_signal())
