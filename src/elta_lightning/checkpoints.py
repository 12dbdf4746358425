"""Trained models from checkpoint files: a whole model (``elta test``, ``elta predict``) or its
weights into a new run (``init_from=``)."""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from elta_lightning.errors import ConfigError, EltaError
from elta_lightning.models.module import IAAModule

log = logging.getLogger(__name__)


class CheckpointError(EltaError, RuntimeError):
    """A checkpoint that is missing, unreadable, unsafe, or not written by this framework."""


#: The hyper-parameters every checkpoint of this framework holds (``IAAModule.__init__``).
HPARAM_KEYS = ("config", "scale", "label_stats")


def read_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """The contents of a checkpoint file of this framework, read without running any code.

    Loaded with ``torch.load(weights_only=True)``: only tensors and plain data (dicts, lists,
    numbers, strings) are accepted, so a file from elsewhere cannot execute code when read. A
    file that is missing, not a checkpoint, truncated, holding other objects, or written by
    another program is one :class:`CheckpointError` naming the file and what it is.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: {path} not found")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{what}: {path} is not a readable checkpoint (torch checkpoints are zip archives; "
            "this file is truncated, corrupt or of another format)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{what}: {path} holds Python objects other than tensors and plain data, so it is "
            f"not loaded (it could run code): {str(error).splitlines()[0]}"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{what}: {path} is not a readable checkpoint (truncated, corrupt or another "
            f"format): {str(error).splitlines()[0]}"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{what}: {path} is not a Lightning checkpoint (no state_dict)")
    hparams = checkpoint.get("hyper_parameters") or {}
    missing = [key for key in HPARAM_KEYS if key not in hparams]
    if missing:
        raise CheckpointError(
            f"{what}: {path} is not an elta-lightning checkpoint of this version (its "
            f"hyper-parameters lack {missing})"
        )
    return checkpoint


def load_checkpoint(path: str | Path) -> IAAModule:
    """A trained model (with its parts' state) from its checkpoint, read safely
    (:func:`read_checkpoint`), without fetching any pretrained weights."""
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    try:
        module = IAAModule(**{key: hparams[key] for key in HPARAM_KEYS}, load_pretrained=False)
        module.load_state_dict(checkpoint["state_dict"])
    except (ConfigError, KeyError, RuntimeError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path} does not rebuild into a model: {str(error).splitlines()[0]}"
        ) from error
    return module


def load_weights(module: IAAModule, path: str | Path) -> None:
    """Copy the weights of a checkpoint of this framework (any method) into ``module``.

    Backbone and head must fit exactly. Part states (``part_states.<name>``) are taken for the
    parts this run also has; those of parts it lacks are left out (logged), and parts new to
    this run keep their fresh state: a model trained with ``fds`` starts an RRT stage with
    ``lds`` as well as one trained without parts.
    """
    checkpoint = read_checkpoint(path, "init_from")
    own = {part.name for part in module.parts}
    state = {k: v for k, v in checkpoint["state_dict"].items() if _part_of(k) in (None, *own)}
    left_out = sorted({_part_of(k) for k in checkpoint["state_dict"]} - own - {None})
    if left_out:
        log.info("init_from: %s: state of parts %s not used by this run", path, left_out)
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CheckpointError(
            f"init_from: {path} does not fit this model (model.backbone / model.head / data set "
            f"differ from the checkpoint's?): {str(error).splitlines()[0]}"
        ) from error
    missing = [key for key in missing if _part_of(key) is None]
    if missing or unexpected:
        raise CheckpointError(
            f"init_from: {path} does not fit this model (model.backbone / model.head / data set "
            f"differ from the checkpoint's?): missing keys {missing[:5]}, unexpected keys "
            f"{unexpected[:5]}"
        )


def _part_of(key: str) -> str | None:
    """The part a state_dict key belongs to (``part_states.<name>.…``), None for the model."""
    return key.split(".")[1] if key.startswith("part_states.") else None
