"""Hyper-parameter sweeps: one sweep file, run by W&B agents or locally by Optuna.

Sweep files
-----------
``experiments/sweeps/<method>.yaml`` are W&B sweep configs. Their parameters are dotted config
keys (``optim.lr``, ``method.tfa.tau1``) and reach the program on its command line::

    command: [${env}, elta, train, method=elta, ${args_no_hyphens}]

The W&B agent replaces ``${args_no_hyphens}`` by one ``key=value`` word per sampled parameter
(``optim.lr=0.0001``), so every DDP process parses the same argv into the same config and nothing
reads ``wandb.config`` (Lightning's DDP launcher re-runs the same argv for ranks 1..N-1).

Fixed arguments (``elta sweep FILE dataset=aadb data.root=/data/AADB trainer.devices=4``, what
``make sweep`` passes) are written into the sweep's ``command`` just before ``${args_no_hyphens}``
when the sweep is created, so every run of every agent, on every machine, gets them
(:func:`with_fixed_args`). A fixed key that is also a swept parameter pins it: the parameter
leaves the search space. ``method=`` belongs to the sweep file (each method has its own file).

Two runners: :mod:`.wandb_agent` (``elta sweep FILE ...``: a W&B sweep and an agent here) and
:mod:`.local` (``elta sweep FILE --local --trials N``: Optuna, no W&B server); their modules
document them. :mod:`.files` reads and checks sweep files; :mod:`.search` maps their search to
Optuna's, :mod:`.pruning` their hyperband; :mod:`.objective` runs one trial and :mod:`.study`
keeps the study of a local sweep.
"""

from elta_lightning.sweeps.files import (
    Sweep,
    agent_command,
    check_applies,
    check_sweep,
    load_sweep,
    sweep_args,
    sweep_files,
    with_fixed_args,
)
from elta_lightning.sweeps.local import run_local_sweep
from elta_lightning.sweeps.objective import TRIAL_FILE
from elta_lightning.sweeps.pruning import PruningCallback, pruner_for
from elta_lightning.sweeps.search import (
    distribution_of,
    grid_size,
    grid_values,
    sampler_for,
    search_space,
)
from elta_lightning.sweeps.wandb_agent import run_wandb_sweep

__all__ = [
    "TRIAL_FILE",
    "PruningCallback",
    "Sweep",
    "agent_command",
    "check_applies",
    "check_sweep",
    "distribution_of",
    "grid_size",
    "grid_values",
    "load_sweep",
    "pruner_for",
    "run_local_sweep",
    "run_wandb_sweep",
    "sampler_for",
    "search_space",
    "sweep_args",
    "sweep_files",
    "with_fixed_args",
]
