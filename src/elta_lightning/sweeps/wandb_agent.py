"""W&B sweeps: ``elta sweep FILE ...``, ``make sweep DATASET=... METHOD=... GPUS=... COUNT=...``.

Creates the sweep on the W&B server (``wandb.sweep``) and starts an agent here
(``wandb.agent(sweep_id, count=...)``): the agent runs the command as a subprocess, so
``trainer.devices=4`` starts a normal 4-process DDP run per trial. More agents elsewhere:
``wandb agent <entity>/<project>/<sweep id>`` (they run the same command, fixed arguments
included). Without an API key, with ``WANDB_MODE=offline|disabled`` or without network it
stops with a one-line :class:`~elta_lightning.tracking.WandbServerError` naming the ``--local``
alternative.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from elta_lightning.errors import EltaError
from elta_lightning.sweeps.files import check_applies, load_sweep, one_line, with_fixed_args
from elta_lightning.tracking import (
    WandbServerError,
    check_reachable,
    wandb_api_key,
    wandb_server_url,
)

log = logging.getLogger(__package__)

#: Ends the errors of a sweep without a server: what to run instead.
LOCAL_HINT = "run the sweep without a server instead: elta sweep FILE --local --trials N"


def run_wandb_sweep(
    file: str | Path,
    overrides: Sequence[str] = (),
    count: int | None = None,
    project: str | None = None,
    entity: str | None = None,
) -> None:
    """Create the sweep on the W&B server, with the fixed arguments in its command, and run an
    agent here for ``count`` runs (default: until the sweep is done). The agent runs each run's
    command as a subprocess (``elta train ...``), so multi-GPU DDP runs work.

    Raises :class:`EltaError` (one line) without a server to talk to: ``WANDB_MODE`` offline or
    disabled, no API key, or the server unreachable."""
    sweep = load_sweep(file)
    config = with_fixed_args(sweep, overrides)
    base = check_applies(config)  # a bad key fails here, not in every run
    base_url = require_wandb_server()
    project = project or config.get("project") or base.logger.project
    entity = entity or config.get("entity") or base.logger.entity
    ensure_elta_on_path()

    import wandb

    try:
        sweep_id = wandb.sweep(config, entity=entity, project=project)
    except Exception as error:
        raise EltaError(
            f"could not create the W&B sweep on {base_url}: {one_line(error)}"
        ) from error
    log.info(
        "sweep %s: agent here for %s runs; more agents: wandb agent %s/%s/%s",
        sweep_id,
        count or "all",
        entity or "<entity>",
        project,
        sweep_id,
    )
    try:
        wandb.agent(sweep_id, entity=entity, project=project, count=count)
    except Exception as error:
        raise EltaError(f"the W&B agent of sweep {sweep_id} stopped: {one_line(error)}") from error


def require_wandb_server() -> str:
    """The URL of the W&B server a sweep lives on, once it is known to be usable: refuse
    offline/disabled mode, a missing API key and a server that cannot be reached."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        raise WandbServerError(
            f"a W&B sweep needs the W&B server, but WANDB_MODE={mode}; {LOCAL_HINT}"
        )
    if not wandb_api_key():
        raise WandbServerError(
            "a W&B sweep needs the W&B server and an API key, and no API key is set "
            f"(WANDB_API_KEY or `wandb login`); {LOCAL_HINT}"
        )
    base_url = wandb_server_url()
    check_reachable(base_url, LOCAL_HINT)
    return base_url


def ensure_elta_on_path() -> None:
    """The agent runs ``/usr/bin/env elta train ...``: put this installation's ``elta`` first on
    PATH (``make sweep`` runs .venv/bin/elta without activating the environment)."""
    ours = Path(sys.executable).parent / "elta"
    if ours.is_file() and shutil.which("elta") != str(ours):
        os.environ["PATH"] = os.pathsep.join([str(ours.parent), os.environ.get("PATH", "")])
