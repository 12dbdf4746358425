"""What a run costs: wall-clock time per training epoch and peak memory, for comparisons of
methods under one budget (``train/epoch_time_s``, ``train/peak_memory_mb`` in metrics.json)."""

from __future__ import annotations

import resource
import sys
import time

import lightning.pytorch as pl
import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: allocated CUDA memory on a GPU, the resident set
    (max RSS) of the process on the CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class ResourceMeter(pl.Callback):
    """Times every whole training epoch (validation excluded; an epoch resumed mid-way is not
    counted) and reads the peak memory at the end of the fit; :meth:`summary` gives the mean
    epoch time and the peak, on this process."""

    def __init__(self) -> None:
        self.epoch_times: list[float] = []
        self.peak_mb = float("nan")
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # an epoch resumed mid-way has no start here (Lightning skips the hook): not counted
        if self._started is not None:
            self.epoch_times.append(time.perf_counter() - self._started)
        self._started = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.peak_mb = peak_memory_mb(pl_module.device)

    def summary(self) -> dict[str, float]:
        """``train/epoch_time_s`` (mean over epochs) and ``train/peak_memory_mb``."""
        mean = sum(self.epoch_times) / len(self.epoch_times) if self.epoch_times else float("nan")
        return {"train/epoch_time_s": mean, "train/peak_memory_mb": self.peak_mb}
