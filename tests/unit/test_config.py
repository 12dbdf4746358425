"""Config composition and validation: groups, overrides, errors that name the key."""

import os
from pathlib import Path

import pytest

from elta_lightning.config import ConfigError, load_config


def test_defaults_compose_the_builtin_dataset_and_elta() -> None:
    cfg = load_config([])
    assert cfg.data.name == "synthetic"
    assert cfg.method.name == "elta" and list(cfg.method.parts) == ["tfa", "flsa"]
    assert cfg.model.backbone == "resnet10t"  # from datamodules/synthetic.yaml
    assert cfg.optim.name == "adam"


def test_dotted_overrides_win_over_yaml_and_are_typed() -> None:
    cfg = load_config(["optim.lr=0.5", "trainer.max_epochs=3", "data.batch_size=8"])
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.trainer.max_epochs == 3
    assert cfg.data.batch_size == 8


def test_unknown_key_names_full_path_and_suggests() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(["data.batchsize=3"])
    message = str(error.value)
    assert "data.batchsize" in message and "batch_size" in message


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(["optim.lr=fast"])


def test_unknown_dataset_and_method_list_what_exists() -> None:
    with pytest.raises(
        ConfigError, match="unknown dataset 'avaa'.*Did you mean 'ava'|unknown dataset 'avaa'"
    ):
        load_config(["dataset=avaa"])
    with pytest.raises(ConfigError, match="unknown method 'vanila'.*vanilla"):
        load_config(["method=vanila"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("method.tfa.tau1=0", "method.tfa.tau1"),
        ("method.tfa.tau2=-1", "method.tfa.tau2"),
        ("method.flsa.weight=-0.1", "method.flsa.weight"),
        ("method.apds.threshold=1.0", "method.apds.threshold"),
        ("data.batch_size=1", "data.batch_size"),
        ("optim.lr=0", "optim.lr"),
    ],
)
def test_out_of_range_values_fail_before_any_work(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config([override])


def test_override_without_equals_sign_is_rejected() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        load_config(["optim.lr"])


def test_rrt_stage_needs_a_checkpoint() -> None:
    with pytest.raises(ConfigError, match="init_from"):
        load_config(["stage=rrt"])


def test_parts_on_the_command_line_append_to_the_method_and_name_the_run() -> None:
    cfg = load_config(["method=vanilla", "parts=tfa,flsa", "method.flsa.weight=0.5"])
    assert cfg.method.name == "vanilla+tfa+flsa"
    assert list(cfg.method.parts) == ["tfa", "flsa"]
    assert cfg.method.flsa.weight == 0.5  # dotted overrides still apply
    lds = load_config(["method=lds", "parts=tfa"])
    assert list(lds.method.parts) == ["lds", "tfa"] and lds.method.name == "lds+tfa"


def test_unknown_part_lists_the_parts() -> None:
    with pytest.raises(ConfigError, match="unknown part 'tfx'.*Did you mean 'tfa'"):
        load_config(["parts=tfx"])


def test_every_part_node_is_validated_listed_or_not() -> None:
    with pytest.raises(ConfigError, match="method.lds.size must be an odd number"):
        load_config(["method=vanilla", "method.lds.size=4"])
    with pytest.raises(ConfigError, match=r"method\.fds\.start_smooth must be > start_update"):
        load_config(["method=fds", "method.fds.start_smooth=0"])
    with pytest.raises(ConfigError, match="method.conr.omega must be > 0"):
        load_config(["method.conr.omega=0"])


def test_experiment_files_list_parts_and_tune_them(tmp_path, monkeypatch) -> None:
    """A recipe is a YAML over parts; a bad key in it names the file."""
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[2] / "datamodules", tmp_path / "datamodules")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mixup.yaml").write_text(
        "method:\n  name: mixup\n  parts: [tfa]\n  tfa:\n    tau1: 0.2\n"
    )
    monkeypatch.setenv("ELTA_CONFIG_ROOT", str(tmp_path))
    cfg = load_config(["method=mixup"])
    assert cfg.method.name == "mixup" and list(cfg.method.parts) == ["tfa"]
    assert cfg.method.tfa.tau1 == 0.2  # the experiment tunes it
    (tmp_path / "experiments" / "broken.yaml").write_text("method:\n  tfa:\n    tau3: 1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*tau3"):
        load_config(["method=broken"])


@pytest.mark.slow
def test_a_wheel_install_finds_its_own_recipes_from_any_folder(tmp_path) -> None:
    """The wheel carries the recipes (pyproject's package-data): installed from it, away from
    the repository, every data set, method and sweep file loads. Built offline from a copy of
    the sources (nothing written into the repository)."""
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"
    shutil.copytree(repo / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("elta_lightning-*.whl")
    site = tmp_path / "site"
    install = [*pip, "install", "--no-deps", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "from elta_lightning.config import available, load_config, project_root\n"
        "from elta_lightning.sweeps.files import sweep_files\n"
        "print(project_root())\n"
        "for d in available('datamodules'):\n"
        "    for m in available('experiments'):\n"
        "        load_config([f'dataset={d}', f'method={m}', 'init_from=x.ckpt'])\n"
        "print(len(available('datamodules')), len(available('experiments')), len(sweep_files()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ELTA_CONFIG_ROOT"}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    root, counts = done.stdout.split()[0], done.stdout.split()[1:]
    assert root == str(site / "elta_lightning" / "recipes")
    expected = [
        len(list((repo / group).glob("*.yaml")))
        for group in ("datamodules", "experiments", "experiments/sweeps")
    ]
    assert [int(c) for c in counts] == expected
