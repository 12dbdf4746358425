"""``elta dashboard``: a W&B workspace whose panels compare methods (``wandb-workspaces``).

The workspace reads what every run logs (see :mod:`elta_lightning.tracking`): the top-level
config keys ``method``, ``parts``, ``dataset``, ``seed``, the test metrics and ``val/srcc_best``
in the summary, and the ``val/srcc`` history. Its sections:

* **Test metrics by method**: bar charts of test SRCC, PLCC, and tail MAE (low / high region,
  few-shot, balanced), one bar per ``method`` (mean over runs, bars for the std over seeds);
* **Validation**: val SRCC and its best-so-far by epoch, one line per ``method`` (mean, std band);
* **Sweeps**: parallel coordinates of the sweep parameters (every ``parameters`` key of
  ``experiments/sweeps/*.yaml``) against ``val/srcc_best``, and their importance for it;
* **Per-region errors**: the runs' ``test/region_errors`` tables.

:func:`build_workspace` only builds the object (no network; tests inspect it);
:func:`save_workspace` is the one function that talks to the W&B server.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

from elta_lightning.errors import ConfigError, EltaError
from elta_lightning.sweeps.files import load_sweep, one_line, sweep_paths
from elta_lightning.tracking import check_reachable, wandb_server_url

#: The config key every comparison panel groups by (a top-level key of every run's config).
GROUP_KEY = "method"

#: The metric a sweep maximises and the parallel-coordinates panel ends on.
SWEEP_METRIC = "val/srcc_best"

#: Sweep parameters shown when no sweep file is found.
DEFAULT_SWEEP_PARAMETERS = ("optim.lr", "data.batch_size")

#: Tail errors compared by method (native scale; lower is better).
TAIL_MAE = ("test/mae_low", "test/mae_high", "test/mae_few", "test/mae_balanced")

#: Ends the error of a server that cannot be reached.
NEEDS_NETWORK = "the dashboard is saved on the server, so it needs network; nothing was saved"


class DashboardError(EltaError):
    """The workspace cannot be saved: no API key or entity, or the server refused. (No network:
    :class:`~elta_lightning.tracking.WandbServerError`.)"""


def config_key(parameter: str) -> str:
    """The run-config key of a sweep parameter: the run config holds the method's name under
    ``method`` and its section under ``method_config`` (see
    :func:`elta_lightning.tracking.run_config`), so ``method.tfa.tau1`` is read from
    ``method_config.tfa.tau1``; every other dotted key is the same."""
    if parameter.startswith("method."):
        return "method_config." + parameter.removeprefix("method.")
    return parameter


def _grouped_bars(title: str, metrics: Sequence[str]) -> wr.BarPlot:
    return wr.BarPlot(
        title=title,
        metrics=list(metrics),
        orientation="v",
        groupby=wr.Config(GROUP_KEY),
        groupby_aggfunc="mean",
        groupby_rangefunc="stddev",
    )


def _grouped_lines(title: str, metric: str) -> wr.LinePlot:
    return wr.LinePlot(
        title=title,
        x="epoch",
        y=[metric],
        groupby=wr.Config(GROUP_KEY),
        groupby_aggfunc="mean",
        groupby_rangefunc="stddev",
    )


def build_workspace(
    project: str, entity: str, dataset: str | None, sweep_parameters: Sequence[str]
) -> ws.Workspace:
    """The workspace comparing the methods of ``entity/project`` (only runs whose config has
    ``dataset`` when given); no network. ``sweep_parameters``: dotted config keys as in a sweep
    file (``optim.lr``, ``method.tfa.tau1``)."""
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(GROUP_KEY))]
    columns += [
        wr.ParallelCoordinatesPlotColumn(metric=wr.Config(config_key(p)), display_name=p)
        for p in sweep_parameters
    ]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(SWEEP_METRIC)))
    sections = [
        ws.Section(
            name="Test metrics by method",
            is_open=True,
            panels=[
                _grouped_bars("Test SRCC by method", ["test/srcc"]),
                _grouped_bars("Test PLCC by method", ["test/plcc"]),
                _grouped_bars("Tail MAE by method (lower is better)", TAIL_MAE),
            ],
        ),
        ws.Section(
            name="Validation",
            is_open=True,
            panels=[
                _grouped_lines("Val SRCC by method", "val/srcc"),
                _grouped_lines("Best val SRCC so far by method", SWEEP_METRIC),
            ],
        ),
        ws.Section(
            name="Sweeps",
            is_open=True,
            panels=[
                wr.ParallelCoordinatesPlot(
                    title=f"Sweep parameters vs {SWEEP_METRIC}", columns=columns
                ),
                wr.ParameterImportancePlot(with_respect_to=SWEEP_METRIC),
            ],
        ),
        ws.Section(
            name="Per-region errors",
            panels=[wr.WeavePanelSummaryTable(table_name="test/region_errors")],
        ),
    ]
    filters = ws.And(ws.Config("dataset") == dataset) if dataset else ""
    pinned = ["config:method", "config:parts", "config:dataset", "config:seed"]
    pinned += ["summary:test/srcc", "summary:test/plcc", f"summary:{SWEEP_METRIC}"]
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"elta: methods on {dataset}" if dataset else "elta: methods",
        sections=sections,
        settings=ws.WorkspaceSettings(max_runs=100),
        runset_settings=ws.RunsetSettings(filters=filters, pinned_columns=pinned),
    )


def sweep_parameters(root: Path | None = None) -> list[str]:
    """The parameters the sweep files (``<root>/experiments/sweeps/*.yaml``, read and checked
    as ``elta sweep`` reads them) vary, in order of first appearance; fixed ones (a single
    ``value``) are left out. Without sweep files: :data:`DEFAULT_SWEEP_PARAMETERS`."""
    try:
        paths = sweep_paths(root)
    except ConfigError:  # no project folder (an installed package): nothing to read
        return list(DEFAULT_SWEEP_PARAMETERS)
    found: dict[str, None] = {}
    for path in paths:
        for name, options in load_sweep(path).parameters.items():
            if set(options) != {"value"}:
                found[name] = None
    return list(found) or list(DEFAULT_SWEEP_PARAMETERS)


def default_entity() -> str:
    """The logged-in user's default W&B entity (asks the server)."""
    import wandb

    try:
        entity = wandb.Api().default_entity
    except Exception as error:  # wandb raises many kinds (auth, comm, usage): say which
        raise DashboardError(f"W&B: {one_line(error)}") from error
    if not entity:
        raise DashboardError("W&B has no default entity for this API key: pass --entity")
    return entity


def save_workspace(workspace: ws.Workspace) -> str:
    """Save ``workspace`` on the W&B server (the network edge); its URL."""
    try:
        return str(workspace.save().url)
    except Exception as error:  # auth, comm or HTTP errors of wandb / requests: one line
        raise DashboardError(f"saving the W&B workspace failed: {one_line(error)}") from error


def create_dashboard(project: str, *, entity: str | None = None, dataset: str | None = None) -> str:
    """Build the method-comparison workspace of ``project`` and save it on the W&B server;
    what was saved and its URL. Raises a one-line :class:`~elta_lightning.tracking.WandbServerError`
    without network, :class:`DashboardError` when the server refuses."""
    check_reachable(wandb_server_url(), NEEDS_NETWORK)
    workspace = build_workspace(project, entity or default_entity(), dataset, sweep_parameters())
    url = save_workspace(workspace)
    return f"W&B workspace {workspace.name!r} ({len(workspace.sections)} sections): {url}"
