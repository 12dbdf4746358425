"""The global batch (``data.batch_size``) split over processes: the share per process, the
errors for a split that does not divide or leaves too little, and what --print-config says."""

import lightning.pytorch as pl
import pytest

from elta_lightning.cli import main
from elta_lightning.config import ConfigError, load_config
from elta_lightning.distributed import batch_plan, per_process_batch, per_process_eval_batch


@pytest.mark.parametrize(("world", "share"), [(1, 48), (2, 24), (4, 12), (8, 6), (16, 3)])
def test_the_authors_batch_splits_evenly(world: int, share: int) -> None:
    assert per_process_batch(48, world) == share


def test_an_uneven_split_names_the_key_and_the_nearest_multiples() -> None:
    with pytest.raises(ConfigError) as error:
        per_process_batch(48, 5)
    message = str(error.value)
    assert "data.batch_size=48 is the global batch" in message and "5 processes" in message
    assert "use e.g. 45, 50" in message


def test_evaluation_batches_round_up() -> None:
    assert per_process_eval_batch(96, 4) == 24 and per_process_eval_batch(97, 4) == 25


def test_validation_checks_the_split_over_devices_and_nodes() -> None:
    with pytest.raises(ConfigError, match="not a multiple of 6"):
        load_config(["data.batch_size=32", "trainer.devices=3", "trainer.num_nodes=2"])
    with pytest.raises(ConfigError, match="leaves 1 per process"):
        load_config(["data.batch_size=8", "trainer.devices=4", "trainer.num_nodes=2"])
    cfg = load_config(["data.batch_size=48", "trainer.devices=4", "trainer.num_nodes=2"])
    plan = batch_plan(cfg)
    assert (plan.world_size, plan.per_process_batch) == (8, 6)
    assert (plan.global_eval_batch, plan.per_process_eval_batch) == (96, 12)
    assert plan.learning_rate == cfg.optim.lr


def test_print_config_says_the_split(capsys) -> None:
    assert main(["train", "--print-config", "data.batch_size=48", "trainer.devices=4"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("# global batch 48 = 4 process(es) x 12")
    assert "learning rate" in first


def test_the_training_loader_takes_this_process_share(synthetic_cache) -> None:
    """A 2-device Trainer (not launched: its world size is known from its settings) gives each
    process half the global batch; evaluation gets half the evaluation batch, rounded up."""
    from elta_lightning.datamodules import build_datamodule

    cfg = load_config(
        [f"data.synthetic.cache_dir={synthetic_cache}", "data.batch_size=16", "data.num_workers=0"]
    )
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False
    )
    assert datamodule.trainer.world_size == 2
    assert datamodule.train_dataloader().batch_size == 8
    assert datamodule.val_dataloader().batch_size == 16


def test_evaluation_sets_split_without_padding_and_need_an_item_per_process() -> None:
    """Under a 2-process Trainer (not launched) rank 0 evaluates items 0, 2, 4 of 5, nothing
    repeated; a set of 1 item cannot give each process one: a clear error, not an assert."""
    from elta_lightning.datamodules.base import evaluation_sampler

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    assert list(evaluation_sampler(list(range(5)), trainer, "five")) == [0, 2, 4]
    assert evaluation_sampler(list(range(5)), None, "five") is None
    with pytest.raises(ConfigError, match="the test split has 1 item.*fewer than the 2 processes"):
        evaluation_sampler([0], trainer, "the test split")


def test_torchrun_processes_must_match_devices_and_nodes(monkeypatch) -> None:
    """What torchrun sets (TORCHELASTIC_RUN_ID, WORLD_SIZE, LOCAL_WORLD_SIZE) against the
    config: 2 processes on 1 node need trainer.devices=2."""
    from elta_lightning.distributed import check_launcher_world

    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    cfg = load_config(["trainer.devices=1"])
    check_launcher_world(cfg)  # not under torchrun: nothing to compare
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="set trainer.devices=2 trainer.num_nodes=1"):
        check_launcher_world(cfg)
    check_launcher_world(load_config(["trainer.devices=2"]))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process on each of two nodes
    with pytest.raises(ConfigError, match="set trainer.devices=1 trainer.num_nodes=2"):
        check_launcher_world(load_config(["trainer.devices=2"]))
    check_launcher_world(load_config(["trainer.devices=1", "trainer.num_nodes=2"]))


def test_srun_tasks_must_match_devices_and_nodes(monkeypatch) -> None:
    """What srun sets for 8 tasks, 4 per node: trainer.devices=4 trainer.num_nodes=2; an
    interactive allocation (job name bash) is not an srun launch."""
    from elta_lightning.distributed import check_launcher_world

    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4(x2)")
    monkeypatch.setenv("SLURM_JOB_NAME", "elta")
    with pytest.raises(
        ConfigError, match="srun started 8 .* set trainer.devices=4 trainer.num_nodes=2"
    ):
        check_launcher_world(load_config(["trainer.devices=1"]))
    check_launcher_world(load_config(["trainer.devices=4", "trainer.num_nodes=2"]))
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")
    check_launcher_world(load_config(["trainer.devices=1"]))
