"""How one run is split over its processes: ``data.batch_size`` is the **global** batch (the
authors' 48 whatever the number of GPUs), divided evenly over ``trainer.devices x
trainer.num_nodes`` processes, so a 4-GPU run takes the same optimiser steps at the same
learning rate as a 1-GPU run (DDP averages the per-process gradients). Also which process this
is (its rank, the size of its process group)."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from elta_lightning.errors import ConfigError


def process_rank() -> int:
    """This process's global rank: 0 outside DDP; from the launcher's environment (``RANK``,
    ``LOCAL_RANK``, ``SLURM_PROCID``) before the process group exists, as Lightning reads it."""
    return int(rank_zero_only.rank)


def process_group_size() -> int:
    """Processes in this run's process group (1 when there is none yet)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def world_size_of(cfg: DictConfig) -> int:
    """The number of training processes ``cfg.trainer`` asks for (devices per node x nodes)."""
    return int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)


def check_launcher_world(cfg: DictConfig) -> None:
    """Under torchrun or ``srun``, the processes the launcher started must be the ones
    ``cfg.trainer`` asks for (``trainer.devices`` per node, ``trainer.num_nodes`` nodes);
    otherwise a :class:`ConfigError` saying what to set. Without it, Lightning goes on with a
    split that does not match: under torchrun the run fails later with an unrelated message,
    under srun every task trains a model of its own into the same run folder."""
    launched = launcher_world()
    if launched is None:
        return
    name, world, per_node = launched
    asked = (int(cfg.trainer.devices), int(cfg.trainer.num_nodes))
    if asked != (per_node, world // per_node):
        raise ConfigError(
            f"{name} started {world} process(es), {per_node} per node, but the config asks for "
            f"trainer.devices={asked[0]} x trainer.num_nodes={asked[1]}: set "
            f"trainer.devices={per_node} trainer.num_nodes={world // per_node}"
        )


def launcher_world() -> tuple[str, int, int] | None:
    """(launcher, processes, processes per node) of a multi-process launch by torchrun
    (``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``) or SLURM's ``srun`` (``SLURM_NTASKS``,
    ``SLURM_NTASKS_PER_NODE``, outside interactive jobs, as Lightning tells them apart);
    None otherwise."""
    if os.environ.get("TORCHELASTIC_RUN_ID") and "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return "torchrun", world, int(os.environ.get("LOCAL_WORLD_SIZE", world))
    tasks = os.environ.get("SLURM_NTASKS", "1")
    interactive = os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive")
    if tasks.isdigit() and int(tasks) > 1 and not interactive:
        per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        return "srun", int(tasks), int(per_node) if per_node.isdigit() else int(tasks)
    return None


def per_process_batch(global_batch: int, world_size: int, key: str = "data.batch_size") -> int:
    """Each process's share of a global training batch; a :class:`ConfigError` naming ``key``
    when it does not divide (an uneven split would change the batch the user asked for)."""
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        choices = ", ".join(str(b) for b in (lower, lower + world_size) if b >= world_size)
        raise ConfigError(
            f"{key}={global_batch} is the global batch, split over {world_size} processes "
            f"(trainer.devices x trainer.num_nodes), but {global_batch} is not a multiple of "
            f"{world_size}: use e.g. {choices}"
        )
    return global_batch // world_size


def per_process_eval_batch(global_batch: int, world_size: int) -> int:
    """Each process's evaluation batch: the global one split, rounded up (evaluation batches
    only chunk the set, so they need not divide; metrics do not depend on them)."""
    return math.ceil(global_batch / world_size)


@dataclass(frozen=True)
class BatchPlan:
    """What ``--print-config`` and each run's ``run_notes.json`` say about the split."""

    world_size: int
    global_batch: int
    per_process_batch: int
    global_eval_batch: int
    per_process_eval_batch: int
    learning_rate: float  # optim.lr, applied to the global batch: the same on any world size

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def describe(self) -> str:
        """One line for people: the split and the learning rate it runs with."""
        return (
            f"global batch {self.global_batch} = {self.world_size} process(es) x "
            f"{self.per_process_batch}; evaluation {self.global_eval_batch} "
            f"({self.per_process_eval_batch} per process); learning rate {self.learning_rate:g} "
            "for the global batch (not scaled: the global batch does not change with the "
            "number of processes)"
        )


def batch_plan(cfg: DictConfig, world_size: int | None = None) -> BatchPlan:
    """The split of ``cfg``'s batches over ``world_size`` processes (default: what
    ``cfg.trainer`` asks for); raises :class:`ConfigError` when the training batch does not
    divide."""
    world = world_size if world_size is not None else world_size_of(cfg)
    global_eval = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    return BatchPlan(
        world_size=world,
        global_batch=int(cfg.data.batch_size),
        per_process_batch=per_process_batch(int(cfg.data.batch_size), world),
        global_eval_batch=int(global_eval),
        per_process_eval_batch=per_process_eval_batch(int(global_eval), world),
        learning_rate=float(cfg.optim.lr),
    )
