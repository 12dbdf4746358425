"""ELTA's training parts through a real Trainer: TFA as a callback on a plain IAAModule, the
ELTAModule (TFA + FLSA attached from its config), the module/callback rule of run.py, and the
reload of an ELTA checkpoint for test and predict."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from elta_lightning.callbacks import FeatureMixup, SimilarityAlignment
from elta_lightning.cli import main
from elta_lightning.config import load_config
from elta_lightning.datamodules import build_datamodule
from elta_lightning.elta import flsa_loss
from elta_lightning.models.elta_module import ELTAModule
from elta_lightning.models.module import IAAModule, TrainBatch
from elta_lightning.run import build_module, load_checkpoint, plugin_callbacks

STEPS = 2


def _setup(overrides: list[str]):
    cfg = load_config(overrides)
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule, build_module(cfg, datamodule)


def _fit(module: IAAModule, datamodule, callbacks=()) -> tuple[pl.Trainer, list[int]]:
    """Fit ``STEPS`` training steps; return the trainer and the batch sizes the head saw."""
    seen: list[int] = []
    hook = module.head.register_forward_pre_hook(
        lambda head, args: seen.append(args[0].shape[0]) if head.training else None
    )
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=STEPS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, datamodule=datamodule)
    hook.remove()
    return trainer, seen


def _batch(size: int = 6, dim: int = 4, seed: int = 0) -> TrainBatch:
    gen = torch.Generator().manual_seed(seed)
    return TrainBatch(
        features=torch.randn(size, dim, generator=gen),
        targets=torch.softmax(torch.randn(size, 10, generator=gen), dim=1),
        scores=torch.linspace(3.0, 8.0, size),
        weights=torch.arange(1.0, size + 1),
    )


def test_tfa_callback_on_a_plain_iaa_module_appends_mixed_samples(tiny_overrides) -> None:
    cfg, datamodule, module = _setup([*tiny_overrides, "method=vanilla"])
    assert type(module) is IAAModule and plugin_callbacks(cfg) == []
    _, seen = _fit(module, datamodule, [FeatureMixup(num_mixed=3, seed=1)])
    assert seen == [cfg.data.batch_size + 3] * STEPS
    assert module.feature_transforms == {}  # detached after the fit


def test_tfa_is_seeded_mixes_weights_and_rejects_a_batch_of_one() -> None:
    module = SimpleNamespace(global_rank=0)
    batch = _batch()
    first = FeatureMixup(num_mixed=4, seed=7)(module, batch)
    again = FeatureMixup(num_mixed=4, seed=7)(module, batch)
    assert first.features.shape == (10, 4) and first.targets.shape == (10, 10)
    for a, b in zip(first.__dict__.values(), again.__dict__.values()):
        assert torch.equal(a, b)
    other_rank = FeatureMixup(num_mixed=4, seed=7)(SimpleNamespace(global_rank=1), batch)
    assert not torch.equal(first.features, other_rank.features)
    # mixed weights lie between the weights of the mixed samples (here 1..6)
    assert torch.equal(first.weights[:6], batch.weights)
    assert ((first.weights[6:] >= 1) & (first.weights[6:] <= 6)).all()
    ratio = FeatureMixup(mixed_ratio=0.5, seed=7)(module, batch)
    assert ratio.features.shape[0] == 6 + 3
    with pytest.raises(ValueError, match="at least 2 samples"):
        FeatureMixup(seed=0)(module, _batch(size=1))
    with pytest.raises(ValueError, match="temperatures must be > 0"):
        FeatureMixup(tau1=0.0)


def test_flsa_plugin_is_the_weighted_loss() -> None:
    batch = _batch()
    value = SimilarityAlignment(weight=0.5)(SimpleNamespace(), batch, torch.empty(0))
    assert torch.allclose(value, 0.5 * flsa_loss(batch.features, batch.scores))
    with pytest.raises(ValueError, match="> 0"):
        SimilarityAlignment(weight=0.0)


def test_module_rule_parts_as_callbacks_or_in_the_elta_module(tiny_overrides) -> None:
    tfa = [*tiny_overrides, "method=vanilla", "method.tfa.enabled=true"]
    assert [type(c) for c in plugin_callbacks(load_config(tfa))] == [FeatureMixup]
    both = load_config([*tfa, "method.flsa.weight=0.5"])
    assert [type(c) for c in plugin_callbacks(both)] == [FeatureMixup, SimilarityAlignment]
    elta = load_config([*tiny_overrides, "method=elta"])
    assert elta.method.module == "elta" and plugin_callbacks(elta) == []  # the module wires them
    _, _, ablation = _setup([*tiny_overrides, "method=elta", "method.flsa.weight=0"])
    assert set(ablation.feature_transforms) == {"tfa"} and ablation.auxiliary_losses == {}


def test_elta_module_trains_logs_flsa_and_its_checkpoint_reloads(tiny_overrides, tmp_path) -> None:
    overrides = [*tiny_overrides, "method=elta", "method.flsa.gather=true"]
    cfg, datamodule, module = _setup(overrides)
    assert isinstance(module, ELTAModule)
    assert set(module.feature_transforms) == {"tfa"} and set(module.auxiliary_losses) == {"flsa"}
    trainer, seen = _fit(module, datamodule)
    assert seen == [cfg.data.batch_size + 1] * STEPS  # ELTA default: one mixed sample per batch
    flsa = trainer.callback_metrics["train/flsa_epoch"]
    assert torch.isfinite(flsa) and flsa > 0
    path = tmp_path / "elta.ckpt"
    trainer.save_checkpoint(path)
    plain = load_checkpoint(path)  # what `elta test` / `elta predict` use
    assert type(plain) is IAAModule and plain.cfg.method.module == "elta"
    again = ELTAModule.load_from_checkpoint(path, map_location="cpu", load_pretrained=False)
    assert set(again.auxiliary_losses) == {"flsa"}
    for key, value in module.state_dict().items():
        assert torch.equal(value, plain.state_dict()[key]), key
        assert torch.equal(value, again.state_dict()[key]), key
    assert main(["test", str(path)]) == 0
