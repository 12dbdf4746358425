"""Sweep files and the sweep machinery without training: every shipped sweep file applies to the
config schema, W&B parameters map to Optuna distributions and samplers, hyperband to a pruner,
fixed arguments reach the agent's command, a W&B sweep fails in one line without a server, and
the local Optuna loop (with a stand-in for ``train``) counts, resumes and records failures."""

import math
import socket
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from elta_lightning import cli, sweeps
from elta_lightning.config import apply_overrides, load_config, project_root, to_yaml
from elta_lightning.errors import ConfigError, EltaError
from elta_lightning.runs import RunResult
from elta_lightning.sweeps import objective, wandb_agent

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = sweeps.sweep_files()
EVERY_METHOD = sorted(p.stem for p in (project_root() / "experiments").glob("*.yaml"))
#: Keys a sweep of any method may set besides its own parts' keys.
SHARED_KEYS = {"data.batch_size", "optim.lr"}


def candidates(parameter: dict) -> list:
    """Values to try for a parameter: all of its values, or both ends and the middle."""
    if "value" in parameter:
        return [parameter["value"]]
    if "values" in parameter:
        return list(parameter["values"])
    low, high = parameter["min"], parameter["max"]
    if parameter.get("distribution") == "log_uniform_values":
        return [low, math.sqrt(low * high), high]
    if isinstance(low, int) and isinstance(high, int):
        return [low, (low + high) // 2, high]
    return [low, (low + high) / 2, high]


def test_a_sweep_file_for_every_method_with_a_search_space() -> None:
    # rrt is a stage that needs a trained model (init_from=): no sweep of its own
    assert set(SHIPPED) == set(EVERY_METHOD) - {"rrt"}


@pytest.mark.parametrize("name", SHIPPED)
def test_sweep_file_is_valid_and_every_value_applies(name: str) -> None:
    sweep = sweeps.load_sweep(project_root() / "experiments" / "sweeps" / f"{name}.yaml")
    raw = yaml.safe_load(sweep.path.read_text())
    assert raw["method"] in ("grid", "random", "bayes")
    assert raw["metric"] == {"name": "val/srcc_best", "goal": "maximize"}
    assert raw["command"] == ["${env}", "elta", "train", f"method={name}", "${args_no_hyphens}"]
    base = load_config([*sweep.fixed, "model.backbone=test_convnext"])
    own = {f"method.{part}." for part in base.method.parts}
    for key, parameter in sweep.parameters.items():
        assert key in SHARED_KEYS or any(key.startswith(p) for p in own), (name, key)
        for value in candidates(parameter):
            (word,) = sweeps.sweep_args({key: value})  # as the W&B agent renders it
            cfg = apply_overrides(base, [word])  # unknown key or wrong type: ConfigError
            assert OmegaConf.select(cfg, key) == pytest.approx(value), word
    assert sweeps.check_applies(sweep.config).method.name == name
    space = sweeps.search_space(sweep.parameters, sweep.method)  # runnable locally too
    assert set(space) == set(sweep.parameters)
    if raw.get("early_terminate"):
        assert raw["early_terminate"]["type"] == "hyperband"
        assert isinstance(
            sweeps.pruner_for(raw["early_terminate"], 20), optuna.pruners.HyperbandPruner
        )


def test_elta_sweep_is_the_authors_grid_searched_with_bayes() -> None:
    sweep = sweeps.load_sweep("elta")
    assert sweep.method == "bayes"
    assert {k: p["values"] for k, p in sweep.parameters.items()} == {
        "data.batch_size": [16, 48],
        "optim.lr": [1e-5, 1e-4],
        "method.flsa.weight": [0.01, 0.1, 0.2, 0.5, 1, 5, 10, 100],
        "method.tfa.tau1": [0.05, 0.1, 0.2, 0.3, 0.4, 0.5],
        "method.tfa.tau2": [2, 3, 4, 5, 6, 7, 10],
    }
    assert "early_terminate" not in sweep.config  # the authors selected by the final val SRCC


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        ("grid", optuna.samplers.GridSampler),
        ("random", optuna.samplers.RandomSampler),
        ("bayes", optuna.samplers.TPESampler),
    ],
)
def test_sampler_for_each_search_method(method: str, kind: type) -> None:
    space = sweeps.search_space({"optim.lr": {"values": [1e-5, 1e-4]}}, method)
    assert isinstance(sweeps.sampler_for(method, space, seed=0), kind)
    for name in SHIPPED:
        sweep = sweeps.load_sweep(name)
        if sweep.method == method:
            shipped = sweeps.search_space(sweep.parameters, method)
            assert isinstance(sweeps.sampler_for(method, shipped, seed=0), kind)


def test_unknown_search_method_is_refused() -> None:
    with pytest.raises(ConfigError, match="grid"):
        sweeps.sampler_for("hyperopt", {}, seed=0)


@pytest.mark.parametrize(
    ("parameter", "expected"),
    [
        ({"values": [16, 48]}, CategoricalDistribution([16, 48])),
        ({"value": 0.5}, CategoricalDistribution([0.5])),
        (
            {"distribution": "categorical", "values": ["bmc", "gai"]},
            CategoricalDistribution(["bmc", "gai"]),
        ),
        ({"distribution": "int_uniform", "min": 1, "max": 9}, IntDistribution(1, 9)),
        ({"min": 1, "max": 9}, IntDistribution(1, 9)),  # inferred, as W&B does
        ({"min": 0.1, "max": 1}, FloatDistribution(0.1, 1.0)),
        ({"distribution": "uniform", "min": 0, "max": 1}, FloatDistribution(0.0, 1.0)),
        (
            {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
            FloatDistribution(1e-5, 1e-3, log=True),
        ),
        (
            {"distribution": "q_uniform", "min": 2, "max": 10, "q": 2},
            IntDistribution(2, 10, step=2),
        ),
        (
            {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
            FloatDistribution(0.0, 1.0, step=0.25),
        ),
        (
            {"distribution": "q_log_uniform_values", "min": 1, "max": 64},
            IntDistribution(1, 64, log=True),
        ),
    ],
)
def test_distribution_mapping(parameter: dict, expected) -> None:
    assert sweeps.distribution_of(parameter) == expected


def test_log_uniform_exponents_become_the_same_log_distribution() -> None:
    mapped = sweeps.distribution_of(
        {"distribution": "log_uniform", "min": math.log(1e-5), "max": math.log(1e-3)}
    )
    assert mapped.log and mapped.low == pytest.approx(1e-5) and mapped.high == pytest.approx(1e-3)


def test_distributions_without_an_optuna_equivalent_are_refused() -> None:
    with pytest.raises(ConfigError, match="normal"):
        sweeps.distribution_of({"distribution": "normal", "mu": 0, "sigma": 1})


def test_grid_points() -> None:
    assert sweeps.grid_values({"values": [3, 5]}) == [3, 5]
    assert sweeps.grid_values({"distribution": "int_uniform", "min": 1, "max": 4}) == [1, 2, 3, 4]
    q = {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.5}
    assert sweeps.grid_values(q) == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="grid needs values"):
        sweeps.grid_values({"distribution": "uniform", "min": 0.0, "max": 1.0})
    space = sweeps.search_space({"a": {"values": [1, 2]}, "b": {"values": [1, 2, 3]}}, "grid")
    assert sweeps.grid_size(space) == 6


def test_hyperband_maps_to_optuna_hyperband() -> None:
    assert isinstance(sweeps.pruner_for(None, 20), optuna.pruners.NopPruner)
    pruner = sweeps.pruner_for({"type": "hyperband", "min_iter": 3, "eta": 2}, max_epochs=20)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (3, 20, 2)
    pruner = sweeps.pruner_for({"type": "hyperband", "max_iter": 27, "s": 2}, max_epochs=20)
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (3, 27, 3)


def test_hyperband_prunes_a_trial_reported_worse_at_the_same_epoch() -> None:
    # max 2 epochs with eta 3: one bracket, so the second trial competes with the first
    pruner = sweeps.pruner_for({"type": "hyperband", "min_iter": 1, "eta": 3}, max_epochs=2)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    first = study.ask()
    first.report(0.8, 1)
    assert not first.should_prune()
    first.report(0.9, 2)
    study.tell(first, 0.9)
    worse = study.ask()
    worse.report(0.1, 1)
    assert worse.should_prune()


def fake_trainer(value: float) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        should_stop=False,
        callback_metrics={"val/srcc_best": torch.tensor(value)},
    )


def test_pruning_callback_reports_stops_and_raises_at_fit_end() -> None:
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(0.5))
    kept, pruned = study.ask(), study.ask()
    callback = sweeps.PruningCallback(kept, "val/srcc_best")
    trainer = fake_trainer(0.7)
    callback.on_validation_end(trainer, None)
    callback.on_fit_end(trainer, None)  # not pruned: nothing raised
    assert not trainer.should_stop and callback.pruned_epoch is None
    callback = sweeps.PruningCallback(pruned, "val/srcc_best")
    trainer = fake_trainer(0.2)
    callback.on_validation_end(trainer, None)
    assert trainer.should_stop and callback.pruned_epoch == 1
    with pytest.raises(optuna.TrialPruned, match="epoch 1"):
        callback.on_fit_end(trainer, None)
    assert study._storage.get_trial(pruned._trial_id).intermediate_values == {1: pytest.approx(0.2)}


# ----- sweep files: checks, fixed arguments, the agent's command --------------------------------


def sweep_config(**changes) -> dict:
    config = {
        "method": "grid",
        "metric": {"name": "val/srcc_best", "goal": "maximize"},
        "parameters": {"optim.lr": {"values": [0.1, 0.2]}},
        "command": ["${env}", "elta", "train", "method=vanilla", "${args_no_hyphens}"],
    }
    config.update(changes)
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "hyperopt"}, "method must be one of"),
        ({"metric": None}, "metric needs a name"),
        ({"metric": {"name": "val/srcc_best", "goal": "max"}}, "metric.goal"),
        ({"parameters": {"optim.lr": {"values": [None]}}}, "null"),
        ({"parameters": {"optim": {"parameters": {"lr": {"values": [1]}}}}}, "nested"),
        ({"parameters": {"optim.lr": {"min": "1e-5", "max": 1.0}}}, "write 1.0e-5"),
        ({"parameters": {"method": {"values": ["lds"]}}}, "not a config key"),
        ({"command": ["python", "train.py", "${args_no_hyphens}"]}, "elta train"),
        ({"command": ["elta", "train", "method=vanilla"]}, "elta train"),
        ({"command": ["elta", "train", "--fast", "${args_no_hyphens}"]}, "not a key=value"),
        (
            {"command": ["elta", "train", "optim.lr=1", "${args_no_hyphens}"]},
            "both fixed in the command and swept",
        ),
        ({"early_terminate": {"type": "envelope"}}, "hyperband"),
        ({"early_terminate": {"type": "hyperband", "eta": 3}}, "min_iter"),
        ({"program": "x", "sweep": 1}, "unknown sweep keys"),
    ],
)
def test_bad_sweep_files_are_clear_errors(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sweeps.check_sweep(sweep_config(**changes), "s.yaml")


def write_sweep(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump(sweep_config(**changes), sort_keys=False))
    return path


def test_a_flow_list_with_unquoted_macros_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("method: grid\ncommand: [${env}, elta, train, ${args_no_hyphens}]\n")
    with pytest.raises(ConfigError, match="quote"):
        sweeps.load_sweep(path)


def test_fixed_arguments_go_into_the_command_and_pin_swept_keys(tmp_path: Path) -> None:
    sweep = sweeps.load_sweep("elta")
    fixed = ["dataset=aadb", "data.root=/data/AADB", "trainer.devices=4", "data.batch_size=48"]
    config = sweeps.with_fixed_args(sweep, fixed)
    assert config["command"] == [
        "${env}",
        "elta",
        "train",
        "method=elta",
        *fixed,
        "${args_no_hyphens}",
    ]
    assert "data.batch_size" not in config["parameters"]  # pinned on the command line
    assert "data.batch_size" in sweep.parameters  # the file's own config is untouched
    with pytest.raises(ConfigError, match="method= is set by the sweep file"):
        sweeps.with_fixed_args(sweep, ["method=lds"])
    with pytest.raises(ConfigError, match="key=value"):
        sweeps.with_fixed_args(sweep, ["dataset"])


def test_agent_command_is_what_the_wandb_agent_runs() -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    config = sweeps.with_fixed_args(sweeps.load_sweep("elta"), ["dataset=aadb"])
    sampled = {
        "data.batch_size": 16,
        "optim.lr": 1e-05,
        "method.flsa.weight": 5,
        "method.tfa.tau1": 0.2,
    }
    rendered = create_sweep_command_args({"args": {k: {"value": v} for k, v in sampled.items()}})
    assert sweeps.sweep_args(sampled) == rendered["args_no_hyphens"]
    argv = sweeps.agent_command(config, sampled)
    assert argv == [
        "/usr/bin/env",
        "elta",
        "train",
        "method=elta",
        "dataset=aadb",
        *rendered["args_no_hyphens"],
    ]
    cfg = load_config(argv[3:])  # what every DDP process of that run parses
    assert (cfg.data.name, cfg.optim.lr, cfg.method.flsa.weight) == ("aadb", 1e-05, 5.0)


# ----- W&B sweeps without a server --------------------------------------------------------------


@pytest.fixture
def no_wandb_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_wandb_sweep_without_api_key_is_a_one_line_error(no_wandb_credentials, capsys) -> None:
    with pytest.raises(EltaError, match="no API key") as caught:
        sweeps.run_wandb_sweep("elta", ["dataset=synthetic"])
    assert "--local" in str(caught.value) and "\n" not in str(caught.value)
    assert cli.main(["sweep", "experiments/sweeps/elta.yaml", "dataset=synthetic"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("elta: error: a W&B sweep needs the W&B server") and "\n" not in err
    assert "Traceback" not in err


def test_wandb_sweep_in_offline_mode_is_a_one_line_error(no_wandb_credentials, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with pytest.raises(EltaError, match="WANDB_MODE=offline"):
        sweeps.run_wandb_sweep("lds", [])


def test_unreachable_server_is_a_one_line_error(no_wandb_credentials, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example")

    def no_network(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)  # the network edge
    message = "cannot reach the W&B server https://wandb.example .Network is unreachable.; run"
    with pytest.raises(EltaError, match=f"{message}.*--local"):
        sweeps.run_wandb_sweep("lds", ["dataset=synthetic"])


@pytest.fixture
def wandb_server(no_wandb_credentials, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The network edge replaced: the server accepts the sweep, the agent records its call."""
    import wandb

    calls: dict = {}
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example:8443")
    monkeypatch.setattr(
        wandb_agent, "check_reachable", lambda url, consequence: calls.setdefault("url", url)
    )

    def create(config, entity=None, project=None):
        calls["sweep"] = (config, entity, project)
        return "abc123"

    monkeypatch.setattr(wandb, "sweep", create)
    monkeypatch.setattr(
        wandb, "agent", lambda sweep_id, **kw: calls.setdefault("agent", (sweep_id, kw))
    )
    return calls


def test_wandb_sweep_is_created_with_the_fixed_arguments_and_an_agent_started(wandb_server) -> None:
    import os

    sweeps.run_wandb_sweep(
        "elta", ["dataset=aadb", "data.root=/data/AADB", "trainer.devices=4"], count=8, entity="lab"
    )
    config, entity, project = wandb_server["sweep"]
    assert config["command"][3:] == [
        "method=elta",
        "dataset=aadb",
        "data.root=/data/AADB",
        "trainer.devices=4",
        "${args_no_hyphens}",
    ]
    assert (entity, project) == ("lab", "elta-lightning")  # project: logger.project
    assert config["metric"] == {"name": "val/srcc_best", "goal": "maximize"}
    assert wandb_server["agent"] == (
        "abc123",
        {"entity": "lab", "project": "elta-lightning", "count": 8},
    )
    assert wandb_server["url"] == "https://wandb.example:8443"  # the server W&B is set up for
    import shutil

    assert shutil.which("elta", path=os.environ["PATH"])  # the agent's `/usr/bin/env elta` resolves


def test_server_errors_are_one_line(wandb_server, monkeypatch) -> None:
    import wandb

    def refuse(*args, **kwargs):
        raise RuntimeError("Error 401: user is not logged in\n  (details)")

    monkeypatch.setattr(wandb, "sweep", refuse)
    with pytest.raises(EltaError, match="could not create the W&B sweep.*401") as caught:
        sweeps.run_wandb_sweep("lds", ["dataset=synthetic"])
    assert "\n" not in str(caught.value)


def test_bad_fixed_arguments_fail_before_the_server(wandb_server) -> None:
    with pytest.raises(ConfigError, match="batchsize"):
        sweeps.run_wandb_sweep("lds", ["data.batchsize=4"])
    assert "sweep" not in wandb_server


# ----- the local Optuna loop, with a stand-in for train() --------------------------------------


class FakeTrain:
    """Writes config.yaml like train(); the value is 10 x lr; raises for chosen lrs."""

    def __init__(self, fail_lr: float | None = None, interrupt_call: int | None = None) -> None:
        self.fail_lr = fail_lr
        self.interrupt_call = interrupt_call
        self.calls: list[float] = []

    def __call__(self, cfg, *, run_dir, callbacks=()):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.calls.append(cfg.optim.lr)
        assert any(isinstance(c, sweeps.PruningCallback) for c in callbacks)
        if len(self.calls) == self.interrupt_call:
            raise KeyboardInterrupt
        if cfg.optim.lr == self.fail_lr:
            raise EltaError(f"training diverged at lr {cfg.optim.lr}")
        return RunResult(run_dir=run_dir, metrics={"val/srcc_best": 10 * cfg.optim.lr})


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def study_of(runs: Path, name: str) -> optuna.Study:
    url = f"sqlite:///{runs / 'sweeps' / name / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=url)


def test_failed_trials_are_recorded_and_the_sweep_goes_on(tmp_path, runs, monkeypatch) -> None:
    fake = FakeTrain(fail_lr=0.2)
    monkeypatch.setattr(objective, "train", fake)
    parameters = {"optim.lr": {"values": [0.1, 0.2]}, "method.lds.size": {"values": [5, 4]}}
    path = write_sweep(tmp_path / "grid.yaml", parameters=parameters)
    summary = sweeps.run_local_sweep(path, 10, [f"runs_dir={runs}"])
    assert "4 of 4 done: completed 1, pruned 0, failed 3 (this call ran 4)" in summary
    assert "method.lds.size must be an odd number" in summary  # config error: no run
    assert "training diverged at lr 0.2" in summary  # error in training: a run folder
    study = study_of(runs, "grid-synthetic")
    states = {(t.params["optim.lr"], t.params["method.lds.size"]): t for t in study.trials}
    assert states[(0.1, 5)].state == TrialState.COMPLETE
    failed = states[(0.2, 5)]
    assert failed.state == TrialState.FAIL and "diverged" in failed.user_attrs["error"]
    record = yaml.safe_load((Path(failed.user_attrs["run_dir"]) / sweeps.TRIAL_FILE).read_text())
    assert record["state"] == "failed" and "diverged" in record["error"]
    assert "run_dir" not in states[(0.1, 4)].user_attrs
    assert "best: trial" in summary and "optim.lr = 0.1" in summary


def test_resume_counts_trials_toward_the_total(tmp_path, runs, monkeypatch) -> None:
    fake = FakeTrain()
    monkeypatch.setattr(objective, "train", fake)
    path = write_sweep(
        tmp_path / "rand.yaml", method="random", parameters={"optim.lr": {"min": 0.01, "max": 0.1}}
    )
    fixed = [f"runs_dir={runs}"]
    assert "2 of 2 done" in sweeps.run_local_sweep(path, 2, fixed)
    again = sweeps.run_local_sweep(path, 2, fixed)
    assert "2 of 2 done" in again and "this call ran 0" in again and len(fake.calls) == 2
    more = sweeps.run_local_sweep(path, 3, fixed)
    assert "3 of 3 done" in more and "this call ran 1" in more
    study = study_of(runs, "rand-synthetic")
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert len({t.params["optim.lr"] for t in study.trials}) == 3  # resumed sampler: new points
    best = max(study.trials, key=lambda t: t.value)
    assert f"best: trial {best.number}" in more
    assert (
        f"run folder: {runs / 'synthetic' / 'vanilla' / f'rand-synthetic-trial{best.number}'}"
        in more
    )
    path.write_text(path.read_text().replace("0.01", "0.02"))
    with pytest.raises(ConfigError, match="another search"):
        sweeps.run_local_sweep(path, 4, fixed)


def test_an_interrupted_trial_is_run_again_and_not_counted(tmp_path, runs, monkeypatch) -> None:
    monkeypatch.setattr(objective, "train", FakeTrain(interrupt_call=2))
    path = write_sweep(
        tmp_path / "rand.yaml", method="random", parameters={"optim.lr": {"min": 0.01, "max": 0.1}}
    )
    fixed = [f"runs_dir={runs}"]
    first = sweeps.run_local_sweep(path, 3, fixed)
    assert "1 of 3 done" in first and "run the same command to resume" in first
    monkeypatch.setattr(objective, "train", FakeTrain())
    second = sweeps.run_local_sweep(path, 3, fixed)
    assert "3 of 3 done: completed 3" in second and "interrupted: 1" in second
    trials = study_of(runs, "rand-synthetic").trials
    assert trials[1].state == TrialState.FAIL and "error" not in trials[1].user_attrs
    assert trials[2].user_attrs["retry_of"] == 1 and trials[2].params == trials[1].params
    record = yaml.safe_load((Path(trials[1].user_attrs["run_dir"]) / sweeps.TRIAL_FILE).read_text())
    assert record["state"] == "interrupted"


def test_local_sweeps_refuse_ddp_and_stale_run_folders(tmp_path, runs, monkeypatch) -> None:
    monkeypatch.setattr(objective, "train", FakeTrain())
    path = write_sweep(tmp_path / "g.yaml")
    with pytest.raises(ConfigError, match="one device"):
        sweeps.run_local_sweep(path, 1, [f"runs_dir={runs}", "trainer.devices=2"])
    (runs / "synthetic" / "vanilla" / "g-synthetic-trial0").mkdir(parents=True)
    with pytest.raises(ConfigError, match="earlier study"):
        sweeps.run_local_sweep(path, 1, [f"runs_dir={runs}"])
    with pytest.raises(ConfigError, match="--trials"):
        sweeps.run_local_sweep(path, 0, [f"runs_dir={runs}"])


def test_a_resumed_grid_runs_the_points_not_yet_run(tmp_path, runs, monkeypatch) -> None:
    monkeypatch.setattr(objective, "train", FakeTrain())
    parameters = {"optim.lr": {"values": [0.1, 0.2]}, "method.flsa.weight": {"values": [0.5, 1.0]}}
    path = write_sweep(tmp_path / "grid.yaml", parameters=parameters)
    assert "2 of 2 done" in sweeps.run_local_sweep(path, 2, [f"runs_dir={runs}"])
    assert "4 of 4 done" in sweeps.run_local_sweep(path, 9, [f"runs_dir={runs}"])  # capped: 4
    points = {tuple(t.params.values()) for t in study_of(runs, "grid-synthetic").trials}
    assert points == {(0.1, 0.5), (0.1, 1.0), (0.2, 0.5), (0.2, 1.0)}
