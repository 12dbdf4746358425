"""`elta compare-demo`: vanilla and ELTA with the same budget and seed, one markdown table with
the tail regions, written beside the two run folders."""

import json

from omegaconf import OmegaConf

from elta_lightning.cli import main
from elta_lightning.config import load_config

BUDGET = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]


def test_compare_demo_trains_both_methods_and_prints_one_table(tiny_overrides, capsys) -> None:
    settings = [o for o in tiny_overrides if not o.startswith("method=")]  # the demo picks them
    overrides = [*settings, *BUDGET, "run_id=demo"]
    assert main(["compare-demo", *overrides]) == 0
    out = capsys.readouterr().out
    assert "| metric | vanilla | elta | change |" in out
    for row in ("SRCC", "MAE low (tail)", "MAE high (tail)"):
        assert f"| {row}" in out
    runs_dir = load_config(tiny_overrides).runs_dir
    summary = json.loads(open(f"{runs_dir}/synthetic/compare/demo.json").read())
    assert summary["runs"] == {
        "vanilla": f"{runs_dir}/synthetic/vanilla/demo",
        "elta": f"{runs_dir}/synthetic/elta/demo",
    }
    vanilla, elta = (
        OmegaConf.load(f"{runs_dir}/synthetic/{m}/demo/config.yaml") for m in ("vanilla", "elta")
    )
    for same in ("seed", "data", "model", "optim", "trainer"):  # same budget and seed
        assert vanilla[same] == elta[same], same
    assert (list(vanilla.method.parts), list(elta.method.parts)) == ([], ["tfa", "flsa"])


def test_compare_demo_refuses_to_change_the_data_set_or_methods(capsys) -> None:
    assert main(["compare-demo", "dataset=ava"]) == 2
    assert "compare-demo fixes" in capsys.readouterr().err
