"""The pieces of an exact resume, each on its own (fast): what Lightning 2.6 does with a
mid-epoch checkpoint and what :class:`ResumableOrder` + :class:`TrainingState` change, the
parts' random streams in checkpoints, the best-so-far metric, atomic checkpoint writes, and the
W&B run id kept in the run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Checkpoint
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from elta_lightning import tracking
from elta_lightning.parts.base import Part
from elta_lightning.resume import (
    AtomicCheckpointIO,
    ResumableOrder,
    ResumableSampler,
    TrainingState,
    remove_partial_writes,
)

BATCH, ROWS, EPOCHS, SAVE_AT = 3, 24, 2, 5  # 8 batches an epoch; a checkpoint after step 5


class Noisy(Dataset):
    """Row ``i`` and a random "augmentation" drawn from the global torch RNG when loaded."""

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, float(torch.rand(()))


class Recorder(pl.LightningModule):
    """Records what each step sees: epoch, batch index, rows, their augmentation, and a
    "dropout" draw of its own from the global RNG."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple] = []

    def training_step(self, batch, batch_idx):
        rows, noise = batch
        dropout = float(torch.rand(()))
        self.seen.append((self.current_epoch, batch_idx, rows.tolist(), noise.tolist(), dropout))
        return self.weight * noise.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Data(pl.LightningDataModule):
    def __init__(self, shuffle: bool) -> None:
        super().__init__()
        self.shuffle = shuffle

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Noisy(), batch_size=BATCH, shuffle=self.shuffle, drop_last=True)


class SaveAt(Checkpoint):
    """Saves ``path`` after training step ``step`` (runs last, like ModelCheckpoint)."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def fit(data: Data, callbacks: list, ckpt: Path | None = None) -> Recorder:
    pl.seed_everything(0, verbose=False)
    module = Recorder()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    with warnings.catch_warnings():  # Lightning's notes on tiny loaders and resuming
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt) if ckpt else None)
    return module


def test_lightning_alone_rereads_the_first_batches_of_a_resumed_epoch(tmp_path) -> None:
    """Evidence for resume.py: Lightning 2.6 restarts a plain loader from its first batch and
    only continues the batch count. If a Lightning release starts skipping the trained batches
    itself, this fails, and ResumableSampler's own skip must go (it would skip twice)."""
    path = tmp_path / "mid.ckpt"
    whole = fit(Data(shuffle=False), [SaveAt(SAVE_AT, path)])
    resumed = fit(Data(shuffle=False), [], ckpt=path)
    first_epoch = [(b, rows) for e, b, rows, *_ in resumed.seen if e == 0]
    assert first_epoch == [(5, [0, 1, 2]), (6, [3, 4, 5]), (7, [6, 7, 8])]  # rows of batches 0-2
    assert [rows for e, b, rows, *_ in whole.seen if e == 0][5:] == [
        [15, 16, 17],
        [18, 19, 20],
        [21, 22, 23],
    ]  # never trained on in the resumed epoch


def test_resumable_order_and_state_continue_exactly(tmp_path) -> None:
    """With the order and the random states in the checkpoint, the resumed fit sees exactly the
    steps the uninterrupted fit took after the checkpoint: same rows, same augmentation draws
    (drawn while loading, one batch ahead of the step), same "dropout" draws."""
    path = tmp_path / "mid.ckpt"

    def run(ckpt: Path | None, save: bool) -> Recorder:
        data, order = Data(shuffle=True), ResumableOrder(seed=11)
        order.install(data)
        callbacks = [TrainingState(order, tmp_path / "last.ckpt", None)]
        return fit(data, callbacks + ([SaveAt(SAVE_AT, path)] if save else []), ckpt)

    whole = run(None, save=True)
    resumed = run(path, save=False)
    assert len(whole.seen) == EPOCHS * ROWS // BATCH
    assert resumed.seen == whole.seen[SAVE_AT:]
    orders = [sorted(sum((r for e, _, r, *_ in whole.seen if e == k), [])) for k in (0, 1)]
    assert orders == [list(range(ROWS))] * 2  # each row once an epoch
    epochs = [[r for e, _, r, *_ in whole.seen if e == k] for k in (0, 1)]
    assert epochs[0] != epochs[1]  # a new permutation each epoch


def test_a_distributed_sampler_resumes_at_its_position() -> None:
    """Under DDP each process's DistributedSampler order continues after the trained batches,
    in the epoch the checkpoint names (Lightning's set_epoch comes after the first iter)."""
    data = list(range(40))
    inner = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=5)
    whole = ResumableSampler(inner, 4, seed=5, track_states=False)
    whole.set_epoch(3)
    order = list(whole)
    position = whole.position(consumed=2, batches=5)
    assert position.epoch == 3 and position.consumed == 2
    fresh = ResumableSampler(
        DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=5),
        4,
        seed=5,
        track_states=False,
    )
    fresh.resume = position
    assert list(fresh) == order[8:]


class Drawing(Part):
    name = "drawing"
    random_stream = 3


def _part() -> Drawing:
    from elta_lightning.parts.base import PartContext

    return Drawing(
        None, PartContext(seed=9, stats=None, scale=None, head_kind="score", feature_dim=4)
    )


def test_a_parts_random_stream_continues_from_a_checkpoint() -> None:
    part = _part()
    device = torch.device("cpu")
    assert part.state_dict() == {}  # nothing drawn: a resume starts the stream from its seed
    torch.rand(5, generator=part.generator(device, 0))
    saved = part.state_dict()
    expected = torch.rand(5, generator=part.generator(device, 0))

    resumed = _part()
    resumed.load_state_dict(saved)
    resumed.on_fit_start(None, None)  # Lightning restores callback states before this hook
    assert resumed.state_dict() == saved  # restored, not drawn from yet: kept as saved
    assert torch.equal(torch.rand(5, generator=resumed.generator(device, 0)), expected)

    fresh = _part()  # without the checkpoint: the seeded stream from its start
    assert not torch.equal(torch.rand(5, generator=fresh.generator(device, 0)), expected)


def test_the_best_so_far_metric_is_in_the_checkpoint(tmp_path) -> None:
    from elta_lightning.metrics import best_so_far

    class Module:
        def __init__(self) -> None:
            self.val_srcc_best = best_so_far("srcc")

    state = TrainingState(ResumableOrder(0), tmp_path / "last.ckpt", None)
    state._module = Module()
    state.load_state_dict({"val_srcc_best": 0.625})
    assert float(state._module.val_srcc_best.compute()) == 0.625
    state._module.val_srcc_best.update(torch.tensor(0.5))
    assert float(state._module.val_srcc_best.compute()) == 0.625


WRITER = textwrap.dedent(
    """
    import sys, torch
    from elta_lightning.resume import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    for i in range(10**6):
        io.save_checkpoint({"i": i, "x": torch.full((2_000_000,), float(i))}, path)
    """
)


def test_a_kill_while_writing_leaves_the_previous_checkpoint_whole(tmp_path) -> None:
    """A process that keeps rewriting an 8 MB checkpoint is frozen (SIGSTOP: the files are
    then what a kill at that instant would leave) at several moments, mostly mid-write: the
    checkpoint always loads, whole and consistent. Then it is killed; the temporary file a kill
    leaves is removed by remove_partial_writes (run when a run resumes)."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        seen = set()
        for delay in (0.0, 0.007, 0.013, 0.031, 0.057, 0.003, 0.021):
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGSTOP)
            saved = torch.load(path, weights_only=True)
            assert torch.equal(saved["x"], torch.full((2_000_000,), float(saved["i"])))
            seen.add(saved["i"])
            os.kill(proc.pid, signal.SIGCONT)
        assert len(seen) > 1  # the file was being rewritten all along
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    torch.load(path, weights_only=True)
    remove_partial_writes(path.parent)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_atomic_io_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch) -> None:
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"i": 1}, path)

    def broken(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"i": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"i": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_the_wandb_run_id_is_kept_in_the_run_folder(tmp_path, monkeypatch) -> None:
    """A resumed run logs into the same W&B run: the id is stored in the folder on the first
    start and passed to WandbLogger (which resumes with resume="allow") on every start."""
    from elta_lightning.config import load_config

    made = []

    class FakeLogger:
        def __init__(self, **kwargs) -> None:
            made.append(kwargs)
            self.experiment = None

        def log_hyperparams(self, params) -> None:
            pass

    monkeypatch.setattr(tracking, "WandbLogger", FakeLogger)
    cfg = load_config(["logger.mode=offline"])
    tracking.build_logger(cfg, tmp_path)
    tracking.build_logger(cfg, tmp_path)
    stored = (tmp_path / tracking.WANDB_ID_FILE).read_text().strip()
    assert len(stored) == 8 and made[0]["id"] == made[1]["id"] == stored
    other = tmp_path / "other"
    tracking.build_logger(cfg, other)
    assert made[2]["id"] != stored
