"""Config composition and validation: groups, overrides, errors that name the key."""

from pathlib import Path

import pytest

from elta_lightning.config import ConfigError, load_config


def test_defaults_compose_the_builtin_dataset_and_elta() -> None:
    cfg = load_config([])
    assert cfg.data.name == "synthetic"
    assert cfg.method.name == "elta" and cfg.method.tfa.enabled and cfg.method.flsa.weight > 0
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


def test_callback_presets_add_parts_to_any_method_and_name_the_run() -> None:
    cfg = load_config(["method=vanilla", "callbacks=tfa,flsa", "method.flsa.weight=0.5"])
    assert cfg.method.name == "vanilla+tfa+flsa"
    assert cfg.method.module == "iaa" and cfg.method.tfa.enabled
    assert cfg.method.flsa.weight == 0.5  # dotted overrides still win over presets


def test_unknown_callback_preset_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match="unknown callback preset 'tfx'.*Did you mean 'tfa'"):
        load_config(["callbacks=tfx"])


def test_experiment_files_can_list_presets(tmp_path, monkeypatch) -> None:
    """An experiment's `callbacks:` presets come before its own keys; a bad key in a preset
    names the file."""
    import shutil

    for folder in ("datamodules", "callbacks"):
        shutil.copytree(Path(__file__).resolve().parents[2] / folder, tmp_path / folder)
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mixup.yaml").write_text(
        "callbacks: [tfa]\nmethod:\n  name: mixup\n  tfa:\n    tau1: 0.2\n"
    )
    monkeypatch.setenv("ELTA_CONFIG_ROOT", str(tmp_path))
    cfg = load_config(["method=mixup"])
    assert cfg.method.name == "mixup"  # listed by the experiment: its name already says so
    assert cfg.method.tfa.enabled and cfg.method.tfa.tau1 == 0.2  # the experiment tunes it
    (tmp_path / "callbacks" / "broken.yaml").write_text("method:\n  tfa:\n    tau3: 1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*tau3"):
        load_config(["method=mixup", "callbacks=broken"])
