"""The W&B workspace of `elta dashboard`: built without network, saved only through the mocked
network edge; without network a one-line error."""

import json
import socket
import time
from pathlib import Path

import pytest
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

from elta_lightning import dashboard
from elta_lightning.cli import main
from elta_lightning.dashboard import (
    DEFAULT_SWEEP_PARAMETERS,
    DashboardError,
    build_workspace,
    create_dashboard,
    save_workspace,
    sweep_parameters,
)
from elta_lightning.errors import ConfigError
from elta_lightning.tracking import WandbServerError


def _panels(workspace: ws.Workspace) -> dict[str, object]:
    return {
        getattr(panel, "title", None) or type(panel).__name__: panel
        for section in workspace.sections
        for panel in section.panels
    }


def test_workspace_compares_methods_on_one_dataset() -> None:
    workspace = build_workspace("elta", "team", "para", ["optim.lr", "method.tfa.tau1"])
    assert (workspace.entity, workspace.project) == ("team", "elta")
    assert [s.name for s in workspace.sections] == [
        "Test metrics by method",
        "Validation",
        "Sweeps",
        "Per-region errors",
    ]
    panels = _panels(workspace)

    bars = {
        "Test SRCC by method": ["test/srcc"],
        "Test PLCC by method": ["test/plcc"],
        "Tail MAE by method (lower is better)": [
            "test/mae_low",
            "test/mae_high",
            "test/mae_few",
            "test/mae_balanced",
        ],
    }
    for title, metrics in bars.items():
        panel = panels[title]
        assert isinstance(panel, wr.BarPlot)
        assert panel.metrics == metrics
        assert isinstance(panel.groupby, wr.Config) and panel.groupby.name == "method"
        assert (panel.groupby_aggfunc, panel.groupby_rangefunc) == ("mean", "stddev")

    curve = panels["Val SRCC by method"]
    assert isinstance(curve, wr.LinePlot)
    assert (curve.x, curve.y, curve.groupby.name) == ("epoch", ["val/srcc"], "method")

    parallel = panels["Sweep parameters vs val/srcc_best"]
    assert isinstance(parallel, wr.ParallelCoordinatesPlot)
    columns = [(type(c.metric).__name__, c.metric.name) for c in parallel.columns]
    assert columns == [
        ("Config", "method"),
        ("Config", "optim.lr"),
        ("Config", "method_config.tfa.tau1"),  # where the run config keeps the method section
        ("SummaryMetric", "val/srcc_best"),
    ]
    assert panels["ParameterImportancePlot"].with_respect_to == "val/srcc_best"
    assert panels["WeavePanelSummaryTable"].table_name == "test/region_errors"

    # only runs of the data set; the runs table shows what runs are grouped and ranked by
    assert workspace.runset_settings.filters == "Config(\"dataset\") == 'para'"
    assert "config:method" in workspace.runset_settings.pinned_columns
    assert "summary:val/srcc_best" in workspace.runset_settings.pinned_columns

    # what would be sent: config keys as W&B stores them, grouped by the method's value
    spec = json.loads(workspace._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))
    sent = json.dumps(spec)
    assert '"groupBy": "method.value"' in sent
    assert '"accessor": "config:optim.value.lr"' in sent
    assert '"accessor": "summary:val/srcc_best"' in sent


def test_workspace_without_dataset_has_no_filter() -> None:
    workspace = build_workspace("elta", "team", None, [])
    assert workspace.runset_settings.filters == ""
    assert workspace.name == "elta: methods"
    parallel = _panels(workspace)["Sweep parameters vs val/srcc_best"]
    assert [c.metric.name for c in parallel.columns] == ["method", "val/srcc_best"]


def _write_sweep(path: Path, parameters: str) -> None:
    """A valid sweep file with the given ``parameters:`` block (YAML lines, indented)."""
    path.write_text(
        "method: grid\n"
        "metric: {name: val/srcc_best, goal: maximize}\n"
        f"parameters:\n{parameters}"
        "command: ['${env}', elta, train, method=elta, '${args_no_hyphens}']\n"
    )


def test_sweep_parameters_come_from_the_sweep_files(tmp_path) -> None:
    assert sweep_parameters(tmp_path) == ["optim.lr", "data.batch_size"]  # no sweep files
    folder = tmp_path / "experiments" / "sweeps"
    folder.mkdir(parents=True)
    _write_sweep(
        folder / "a.yaml",
        "  optim.lr: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-3}\n"
        "  method.tfa.tau1: {values: [0.1, 0.5]}\n"
        "  data.batch_size: {value: 16}\n",  # fixed: not a parameter to compare
    )
    _write_sweep(folder / "b.yaml", "  optim.lr: {values: [1.0e-4]}\n  seed: {values: [1, 2]}\n")
    assert sweep_parameters(tmp_path) == ["optim.lr", "method.tfa.tau1", "seed"]


def test_sweep_parameters_check_the_files_as_elta_sweep_does(tmp_path) -> None:
    folder = tmp_path / "experiments" / "sweeps"
    folder.mkdir(parents=True)
    _write_sweep(folder / "c.yaml", "  {}\n")
    with pytest.raises(ConfigError, match="c.yaml: parameters must map dotted config keys"):
        sweep_parameters(tmp_path)
    _write_sweep(folder / "c.yaml", "  optim.lr: {values: []}\n")
    with pytest.raises(ConfigError, match="c.yaml: parameter 'optim.lr': values must be a non"):
        sweep_parameters(tmp_path)


def test_shipped_sweep_files_give_the_dashboard_their_parameters() -> None:
    shipped = sweep_parameters()
    assert {"optim.lr", "method.tfa.tau1"} <= set(shipped)
    assert shipped != list(DEFAULT_SWEEP_PARAMETERS)


def test_create_dashboard_saves_the_built_workspace(monkeypatch) -> None:
    saved = []

    def fake_save(workspace: ws.Workspace) -> str:  # the network edge
        saved.append(workspace)
        return "https://wandb.example/team/elta?nw=abc"

    monkeypatch.setattr(dashboard, "check_reachable", lambda url, consequence: None)
    monkeypatch.setattr(dashboard, "save_workspace", fake_save)
    printed = create_dashboard("elta", entity="team", dataset="aadb")
    assert printed == (
        "W&B workspace 'elta: methods on aadb' (4 sections): https://wandb.example/team/elta?nw=abc"
    )
    (workspace,) = saved
    assert (workspace.entity, workspace.project) == ("team", "elta")
    assert workspace.runset_settings.filters == "Config(\"dataset\") == 'aadb'"


def test_save_errors_become_one_line(monkeypatch) -> None:
    def refuse(self):
        raise ConnectionError("server said no\nsecond line")

    monkeypatch.setattr(ws.Workspace, "save", refuse)
    with pytest.raises(DashboardError) as error:
        save_workspace(build_workspace("elta", "team", None, []))
    assert str(error.value) == "saving the W&B workspace failed: ConnectionError: server said no"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_without_network_the_command_says_so(monkeypatch, capsys) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    start = time.monotonic()
    with pytest.raises(WandbServerError, match=f"cannot reach the W&B server {url}"):
        create_dashboard("elta")
    assert main(["dashboard", "--project", "elta", "--entity", "team"]) == 1
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"elta: error: cannot reach the W&B server {url}")
    assert "nothing was saved" in err and "\n" not in err
