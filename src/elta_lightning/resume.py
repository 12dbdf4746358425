"""What an exact resume needs beyond Lightning's own checkpoint contents, and how a run stops
cleanly when it is told to.

Lightning's checkpoint holds the model (with every part's state), optimiser, scheduler, loop
counters and callback states. Resuming from a checkpoint written in the middle of an epoch,
Lightning 2.6 restarts the training loader from its first batch and only counts on from the
saved batch index (``_TrainingEpochLoop.on_run_start``: ``data_fetcher.fetched +=
batch_progress.current.ready`` on a fresh iterator; it warns "your dataloader is not
resumable"), so the batches already trained on in that epoch are trained on again and the last
ones never, and nothing stores the random number generators. This module closes those gaps:

* :class:`ResumableOrder` owns the training loader's sample order: one permutation per epoch
  drawn from ``(seed, epoch)`` (a DistributedSampler keeps its own ``seed + epoch`` order), so a
  restarted process draws the same permutation and skips the batches already trained on.
* :class:`TrainingState` stores, in every checkpoint and per process, the global random states
  (torch, CUDA, numpy, Python) and where the loader stood, including the random state before
  each batch the loader had already fetched ahead (Lightning prefetches one); restoring them at
  the same points repeats every random draw (crops, flips, dropout) of the uninterrupted run. It
  also keeps the best-so-far validation SRCC (a torchmetrics state, not in the state_dict) and
  writes ``last.ckpt`` every ``trainer.checkpoint_every_n_steps`` training steps.
* :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file beside it and renames
  it into place, so a kill while writing leaves the previous checkpoint intact.
* :class:`Preemption` turns SIGTERM and SIGUSR1 into a checkpoint at the next batch boundary,
  the same one on every DDP process, and :class:`RunInterrupted` (exit code 128 + signal), and
  requeues a SLURM job on SIGUSR1.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from elta_lightning.distributed import process_group_size

log = logging.getLogger(__name__)

#: Signals that stop a run with a checkpoint (SLURM sends SIGUSR1 ahead of a time limit when
#: asked to with ``--signal=USR1@<seconds>``; SIGTERM comes from ``scancel``, preemption, ``kill``).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: Signals after which a SLURM job is requeued (Lightning's ``SLURMEnvironment`` default).
REQUEUE_SIGNALS = (signal.SIGUSR1,)
#: Random stream of the training order (distinct from the parts' streams, parts/base.py).
ORDER_STREAM = 7


# ----- checkpoint files ---------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to ``.<name>.<pid>.tmp`` in its own folder, flushes it to disk and
    renames it over the old file (``os.replace``: atomic on one file system).

    Lightning's ``TorchCheckpointIO`` (``_atomic_save``) writes through an fsspec transaction
    whose temporary file is made by ``tempfile.mkstemp()`` in the system temp folder, then moved
    with ``shutil.move``: when that folder is on another file system than the run (a node-local
    /tmp and a shared run folder, as on most clusters), the move is a copy into the final path,
    and a kill during the copy leaves a truncated checkpoint. Remote paths (``s3://`` ...) keep
    Lightning's behaviour."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on folders; the rename itself is done
    finally:
        os.close(descriptor)


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete temporary files a killed :class:`AtomicCheckpointIO` write left in ``folder``."""
    removed = sorted(Path(folder).glob(".*.tmp"))
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# ----- random states ------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global random states of this process, as tensors and plain data (a checkpoint with
    them still loads with ``torch.load(weights_only=True)``). CUDA's only once CUDA is in use."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def per_rank(local: Any) -> list[Any]:
    """``local`` of every process, in rank order (``[local]`` in a single process). A
    collective: every process must call it, as every process calls ``Trainer.save_checkpoint``."""
    if process_group_size() == 1:
        return [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def rank_entry(entries: list[Any] | None, what: str) -> Any:
    """This process's entry of a :func:`per_rank` list; None (with a warning) when the
    checkpoint was written by another number of processes."""
    if not entries:
        return None
    world = process_group_size()
    if len(entries) != world:
        log.warning(
            "%s was saved by %d processes and this run has %d: it is not restored (the run goes "
            "on with fresh random streams)",
            what,
            len(entries),
            world,
        )
        return None
    return entries[dist.get_rank() if world > 1 else 0]


# ----- training order -----------------------------------------------------------------------
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's permutation: a function of the run's seed and the epoch
    only, so a restarted process draws the same order whatever else used the global RNG."""
    entropy = [seed % 2**63, epoch, ORDER_STREAM]
    value = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1
    generator = torch.Generator()
    generator.manual_seed(value)
    return generator


@dataclass
class LoaderPosition:
    """Where a restarted training loader resumes: in ``epoch``, after ``consumed`` batches were
    trained on; the random state before each batch the old loader had fetched ahead
    (``pending``: batch index -> state, up to ``fetched``), and the state at the checkpoint
    (``after``), set before the first batch beyond them."""

    epoch: int
    consumed: int
    fetched: int
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    after: dict[str, Any] | None = None


class ResumableSampler(Sampler[int]):
    """The training batch sampler's source of indices (see :class:`ResumableOrder`).

    Each epoch it sets the wrapped sampler's epoch (DistributedSampler) or its generator
    (:func:`epoch_generator`, for a RandomSampler without one), yields its indices, notes the
    random state before each batch starts (single-process loading, where the data's random crops
    and flips draw from the global RNG), and, in the first epoch after a restart, skips the
    batches already trained on and restores the noted states at the same points."""

    #: how many of the latest batches' random states are kept (Lightning fetches one ahead)
    KEEP = 8

    def __init__(self, inner: Sampler[int], batch_size: int, seed: int, track_states: bool) -> None:
        self.inner = inner
        self.batch_size = batch_size
        self.seed = seed
        self.track_states = track_states
        self.owns_order = isinstance(inner, RandomSampler) and inner.generator is None
        self.epoch = 0
        self.resume: LoaderPosition | None = None
        self.iter_epoch: int | None = None
        self.started = 0  # batches of the current epoch whose first index was handed out
        self.before: dict[int, dict[str, Any]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch (``_set_sampler_epoch``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        resume, self.resume = self.resume, None
        if resume is not None:
            self.epoch = resume.epoch
        epoch = self.epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        if self.owns_order:
            self.inner.generator = epoch_generator(self.seed, epoch)  # type: ignore[attr-defined]
        self.iter_epoch, self.started, self.before = epoch, 0, {}
        skip = resume.consumed * self.batch_size if resume is not None else 0
        for position, index in enumerate(self.inner):
            if position < skip:
                continue
            if position % self.batch_size == 0:
                self._batch_starts(position // self.batch_size, resume)
            yield index
        self._batch_starts(None, resume)

    def _batch_starts(self, batch: int | None, resume: LoaderPosition | None) -> None:
        """Before batch ``batch`` is loaded (None: the epoch's indices are used up)."""
        if resume is not None and resume.after is not None:
            if batch is not None and batch in resume.pending:
                set_rng_state(resume.pending[batch])
            elif batch is None or batch >= resume.fetched:
                set_rng_state(resume.after)
                resume.after = None
        if batch is None:
            return
        self.started = batch + 1
        if self.track_states:
            self.before[batch] = rng_state()
            self.before.pop(batch - self.KEEP, None)

    def position(self, consumed: int, batches: int | float) -> LoaderPosition | None:
        """Where to resume after ``consumed`` of the epoch's ``batches`` were trained on."""
        if self.iter_epoch is None:
            return None
        if consumed >= batches:
            return LoaderPosition(self.iter_epoch + 1, 0, 0)
        if not self.track_states:  # loader workers: the main process draws nothing per batch
            return LoaderPosition(self.iter_epoch, consumed, consumed)
        pending = {i: self.before[i] for i in range(consumed, self.started) if i in self.before}
        return LoaderPosition(self.iter_epoch, consumed, max(self.started, consumed), pending)


class ResumableOrder:
    """Makes the training loader of a DataModule resumable (:class:`ResumableSampler`) without
    changing the DataModule: its ``train_dataloader`` is wrapped so that the sampler inside each
    loader it returns is replaced. Loaders it cannot adapt (no ``BatchSampler``) keep their order
    and a restarted epoch re-reads its first batches (Lightning's behaviour; logged)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.sampler: ResumableSampler | None = None
        self.resume: LoaderPosition | None = None

    def install(self, datamodule: pl.LightningDataModule) -> None:
        original = datamodule.train_dataloader
        if isinstance(original, functools.partial) and original.func is _resumable_loader:
            original = original.args[0]  # installed before (a second fit of one DataModule)
        datamodule.train_dataloader = functools.partial(_resumable_loader, original, self)

    def adopt(self, loader: Any) -> Any:
        batch_sampler = getattr(loader, "batch_sampler", None)
        if not isinstance(loader, DataLoader) or type(batch_sampler) is not BatchSampler:
            log.warning(
                "the training loader has no plain BatchSampler: a run resumed mid-epoch "
                "re-reads that epoch's first batches"
            )
            return loader
        inner = batch_sampler.sampler
        if isinstance(inner, ResumableSampler):
            inner = inner.inner
        sampler = ResumableSampler(
            inner, batch_sampler.batch_size, self.seed, track_states=loader.num_workers == 0
        )
        sampler.resume, self.resume = self.resume, None
        batch_sampler.sampler = sampler
        self.sampler = sampler
        return loader


def _resumable_loader(original: Callable[[], Any], order: ResumableOrder) -> Any:
    return order.adopt(original())


# ----- what a checkpoint holds beyond Lightning's own ----------------------------------------
class TrainingState(Checkpoint):
    """Random states, loader position and best-so-far validation SRCC in every checkpoint (per
    process), restored on resume; and ``last.ckpt`` every ``every_n_steps`` training steps.

    A ``Checkpoint`` subclass so that Lightning runs its batch-end hook after every other
    callback's (``_reorder_callbacks``), as it does for ``ModelCheckpoint``: the state saved is
    the state after the whole step. No step checkpoint on an epoch's last batch: the epoch-end
    checkpoint follows it, after validation."""

    def __init__(self, order: ResumableOrder, last: Path, every_n_steps: int | None) -> None:
        self.order = order
        self.last = Path(last)
        self.every_n_steps = every_n_steps
        self._trainer: pl.Trainer | None = None
        self._module: pl.LightningModule | None = None
        self._saved_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer, self._module = trainer, pl_module

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        every, step = self.every_n_steps, trainer.global_step
        if not every or step % every or step == self._saved_step:
            return
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        trainer.save_checkpoint(self.last, weights_only=False)
        self._saved_step = step

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        position = None
        if self.order.sampler is not None:
            consumed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            position = self.order.sampler.position(consumed, trainer.num_training_batches)
        local = {"rng": rng_state(), "loader": None if position is None else vars(position)}
        state: dict[str, Any] = {"per_rank": per_rank(local)}
        best = getattr(self._module, "val_srcc_best", None)
        if best is not None:
            state["val_srcc_best"] = float(best.max_value)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        entry = rank_entry(state_dict.get("per_rank"), "the random and loader state")
        if entry is not None:
            set_rng_state(entry["rng"])
            loader = entry.get("loader")
            if loader is not None:
                # mid-epoch: the checkpoint's state goes back in after the batches fetched ahead;
                # at an epoch boundary, setting it now (above) is the right point already
                after = entry["rng"] if loader["consumed"] > 0 else None
                self.order.resume = LoaderPosition(**{**loader, "after": after})
        best = state_dict.get("val_srcc_best")
        metric = getattr(self._module, "val_srcc_best", None)
        if metric is not None and best is not None and np.isfinite(best):
            metric.update(torch.tensor(best))


# ----- stopping on a signal -----------------------------------------------------------------
class RunInterrupted(SIGTERMException):
    """A run stopped by a signal, after saving a checkpoint where it could. A ``SystemExit``
    (as Lightning's ``SIGTERMException``) whose code is 128 + the signal's number, the shell's
    convention for a process ended by a signal."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)
        self.checkpoint = checkpoint
        self.run_dir: Path | None = None  # set by the run that was stopped

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        where = f"checkpoint {self.checkpoint}" if self.checkpoint else "no checkpoint yet"
        return f"stopped by {self.signal_name} ({where})"


class Preemption(Checkpoint):
    """SIGTERM and SIGUSR1 end a run with a checkpoint, as on SLURM preemption and time limits.

    :meth:`handling` installs the handlers for the whole run, and :meth:`attach` keeps
    Lightning from replacing them during ``fit``: Lightning 2.6's SIGTERM handler broadcasts a
    tensor from inside the signal handler (lightning PR #20825), which deadlocks DDP when the
    signal lands while a process is entering another collective (reproduced here: rank 0 in
    the handler's broadcast, rank 1 in a checkpoint barrier), and its loops raise on a
    per-process flag, so processes can stop at different batches (lightning#20806).

    Instead a signal is only recorded (and passed on to the processes Lightning launched).
    After each training batch, as the last callback, every process asks whether any process
    received one (one all-reduce under DDP, nothing otherwise); if so, all of them raise
    ``SIGTERMException`` at that same batch boundary, and :meth:`on_exception` saves
    ``last.ckpt`` there (the state an every-N-steps checkpoint would hold; Lightning's SLURM
    handler instead saves inside the signal handler, wherever the step is) and, after SIGUSR1
    under SLURM, requeues the job. Before ``fit`` (data set-up) a signal stops the run at once
    (:class:`RunInterrupted`, nothing to save); after ``fit`` it is acted on before the test
    (:meth:`stop_after_fit`), and during the test it is let be (the run finishes)."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = Path(checkpoint)
        self.signum: int | None = None
        self.saved: Path | None = None
        self._trainer: pl.Trainer | None = None
        self._phase = "setup"  # setup -> fit -> after

    @contextmanager
    def handling(self) -> Iterator[Preemption]:
        """Install the handlers (main thread only) and restore the previous ones after."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def attach(self, trainer: pl.Trainer) -> None:
        """Keep ``trainer`` from installing Lightning's signal handlers over ours in ``fit``
        (its private signal connector; without it, a warning and Lightning's behaviour)."""
        connector = getattr(trainer, "_signal_connector", None)
        if connector is None or not hasattr(connector, "register_signal_handlers"):
            log.warning("this Lightning version has no signal connector to replace")
            return
        connector.register_signal_handlers = _keep_our_handlers

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        if self._phase == "setup":
            raise RunInterrupted(signum, None)
        if self._phase == "fit":
            log.warning("received %s: stopping after the current batch", _name(signum))
        else:
            log.warning("received %s after training: finishing the run's test", _name(signum))
        launcher = getattr(self._trainer.strategy, "launcher", None) if self._trainer else None
        kill = getattr(launcher, "kill", None)
        if callable(kill):  # the DDP processes Lightning started from this one
            kill(signum)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer, self._phase = trainer, "fit"

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._phase = "after"

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._stop_requested(trainer):
            raise SIGTERMException()

    def _stop_requested(self, trainer: pl.Trainer) -> bool:
        """Whether any process received a stop signal (the same answer on every process)."""
        return bool(trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False))

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._phase = "after"
        if not isinstance(exception, SIGTERMException) or isinstance(exception, RunInterrupted):
            return
        trainer.save_checkpoint(self.checkpoint, weights_only=False)
        self.saved = self.checkpoint
        log.warning("%s: saved %s", _name(self.signum or signal.SIGTERM), self.checkpoint)
        if self.signum in REQUEUE_SIGNALS and trainer.is_global_zero:
            requeue_slurm_job()

    def interrupted(self, error: SIGTERMException) -> RunInterrupted:
        """The :class:`RunInterrupted` that ``error`` (raised here or by a handler) means."""
        if isinstance(error, RunInterrupted):
            return error
        return RunInterrupted(self.signum or signal.SIGTERM, self.saved)

    def stop_after_fit(self, trainer: pl.Trainer) -> None:
        """After ``fit`` returned: a signal that came after the last training batch stops the
        run before the test (the final epoch-end checkpoint is the one to resume from)."""
        if self._stop_requested(trainer):
            last = self.checkpoint if self.checkpoint.is_file() else None
            raise RunInterrupted(self.signum or signal.SIGTERM, last)


def _keep_our_handlers() -> None:
    """Stands in for Lightning's ``_SignalConnector.register_signal_handlers`` (see
    :meth:`Preemption.attach`); its ``teardown`` then has nothing to restore."""


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def slurm_job() -> str | None:
    """The SLURM job to requeue (``<array job>_<task>`` for array jobs), None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this SLURM job (what Lightning's ``SLURMEnvironment(auto_requeue=
    True)`` does on SIGUSR1); False outside SLURM or when scontrol fails (logged)."""
    job = slurm_job()
    if not job:
        return False
    try:
        result = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, check=False
        )
    except OSError as error:
        log.warning("could not requeue SLURM job %s: %s", job, error)
        return False
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job, result.stderr.strip())
        return False
    log.warning("requeued SLURM job %s: it resumes from its last checkpoint", job)
    return True
