"""The one mechanism for long-tail parts, through real Trainers: parts come from
``method.parts``, are returned by the model's ``configure_callbacks()``, act in list order, and
reload with a checkpoint; ``method=elta`` is ``method=vanilla parts=tfa,flsa``."""

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from elta_lightning.checkpoints import load_checkpoint
from elta_lightning.cli import main
from elta_lightning.config import ConfigError, load_config
from elta_lightning.datamodules import build_datamodule
from elta_lightning.elta import flsa_loss
from elta_lightning.label_stats import LabelStats
from elta_lightning.parts import (
    FeatureMixup,
    FLSAConfig,
    PartContext,
    SimilarityAlignment,
    TFAConfig,
    TrainStep,
)
from elta_lightning.run import build_module
from elta_lightning.scales import AVA_SCALE

STEPS = 3


def _setup(overrides: list[str]):
    cfg = load_config(overrides)
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule, build_module(cfg, datamodule)


class LossRecorder(pl.Callback):
    """The training loss of every step, as a Python float (read after the step)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(module, datamodule, seed: int = 0) -> tuple[pl.Trainer, list[int], list[float]]:
    """Fit ``STEPS`` training steps; return the trainer, the batch sizes the head saw and the
    loss of every step."""
    pl.seed_everything(seed, workers=True, verbose=False)
    seen: list[int] = []
    hook = module.head.register_forward_pre_hook(
        lambda head, args: seen.append(args[0].shape[0]) if head.training else None
    )
    recorder = LossRecorder()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=STEPS,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
        deterministic=True,
    )
    trainer.fit(module, datamodule=datamodule)
    hook.remove()
    return trainer, seen, recorder.losses


def _context(seed: int = 7) -> PartContext:
    stats = LabelStats.from_scores(torch.linspace(2.0, 8.0, 50), 1.0)
    return PartContext(
        seed=seed, stats=stats, scale=AVA_SCALE, head_kind="distribution", feature_dim=4
    )


def _step(size: int = 6, dim: int = 4, seed: int = 0) -> TrainStep:
    gen = torch.Generator().manual_seed(seed)
    return TrainStep(
        images=None,
        features=torch.randn(size, dim, generator=gen),
        targets=torch.softmax(torch.randn(size, 10, generator=gen), dim=1),
        scores=torch.linspace(3.0, 8.0, size),
        weights=torch.arange(1.0, size + 1),
    )


def test_elta_is_vanilla_with_tfa_and_flsa_parts(tiny_overrides) -> None:
    _, data_a, elta = _setup([*tiny_overrides, "method=elta"])
    _, data_b, parts = _setup([*tiny_overrides, "method=vanilla", "parts=tfa,flsa"])
    assert [p.name for p in elta.parts] == [p.name for p in parts.parts] == ["tfa", "flsa"]
    assert elta.cfg.method.name == "elta" and parts.cfg.method.name == "vanilla+tfa+flsa"
    parts.load_state_dict(elta.state_dict())  # the same initial weights
    _, seen_a, losses_a = _fit(elta, data_a)
    _, seen_b, losses_b = _fit(parts, data_b)
    assert seen_a == seen_b == [17] * STEPS  # batch 16 + one TFA sample, seen by the head
    assert losses_a == losses_b
    for key, value in elta.state_dict().items():
        assert torch.equal(value, parts.state_dict()[key]), key


def test_parts_are_the_model_callbacks_and_flsa_is_logged(tiny_overrides, tmp_path) -> None:
    cfg, datamodule, module = _setup([*tiny_overrides, "method=elta", "method.flsa.gather=true"])
    assert module.configure_callbacks() == module.parts
    trainer, seen, _ = _fit(module, datamodule)
    assert all(part in trainer.callbacks for part in module.parts)
    flsa = trainer.callback_metrics["train/flsa_epoch"]
    assert torch.isfinite(flsa) and flsa > 0
    path = tmp_path / "elta.ckpt"
    trainer.save_checkpoint(path)
    again = load_checkpoint(path)  # what `elta test` / `elta predict` use
    assert [p.name for p in again.parts] == ["tfa", "flsa"]
    assert again.label_stats == module.label_stats
    for key, value in module.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    assert main(["test", str(path)]) == 0


def test_tfa_part_is_seeded_mixes_weights_and_rejects_a_batch_of_one() -> None:
    module = SimpleNamespace(global_rank=0)
    step = _step()
    first = FeatureMixup(TFAConfig(num_mixed=4), _context()).transform_features(module, step)
    again = FeatureMixup(TFAConfig(num_mixed=4), _context()).transform_features(module, step)
    assert first.features.shape == (10, 4) and first.targets.shape == (10, 10)
    for name in ("features", "targets", "scores", "weights"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    rank1 = FeatureMixup(TFAConfig(num_mixed=4), _context())
    other = rank1.transform_features(SimpleNamespace(global_rank=1), step)
    assert not torch.equal(first.features, other.features)
    # mixed weights lie between the weights of the mixed samples (here 1..6)
    assert torch.equal(first.weights[:6], step.weights)
    assert ((first.weights[6:] >= 1) & (first.weights[6:] <= 6)).all()
    ratio = FeatureMixup(TFAConfig(mixed_ratio=0.5), _context()).transform_features(module, step)
    assert ratio.features.shape[0] == 6 + 3
    with pytest.raises(ValueError, match="at least 2 samples"):
        FeatureMixup(TFAConfig(), _context()).transform_features(module, _step(size=1))


def test_flsa_part_is_the_weighted_loss() -> None:
    step = _step()
    value = SimilarityAlignment(FLSAConfig(weight=0.5), _context()).auxiliary_loss(
        SimpleNamespace(), step, torch.empty(0)
    )
    assert torch.allclose(value, 0.5 * flsa_loss(step.features, step.scores))


def test_part_lists_are_checked_at_start_up(tiny_overrides) -> None:
    with pytest.raises(ConfigError, match="unknown part 'tfx'.*Did you mean 'tfa'"):
        load_config([*tiny_overrides, "parts=tfx"])
    with pytest.raises(ConfigError, match="listed more than once"):
        load_config([*tiny_overrides, "method=elta", "parts=tfa"])
    with pytest.raises(ConfigError, match="method.flsa.weight must be > 0"):
        load_config([*tiny_overrides, "method=elta", "method.flsa.weight=0"])
    with pytest.raises(ConfigError, match="method.tfa.mixed_ratio"):
        load_config([*tiny_overrides, "method.tfa.mixed_ratio=2"])


def test_at_most_one_part_replaces_the_task_loss_or_weights_samples(tiny_overrides) -> None:
    with pytest.raises(ConfigError, match="at most one part may replace the task loss"):
        load_config([*tiny_overrides, "method=balanced_mse", "parts=focal_r"])
    with pytest.raises(ConfigError, match="at most one part may set sample weights"):
        load_config([*tiny_overrides, "method=lds", "parts=sqinv"])


def test_balanced_mse_sigma_is_learned_in_its_own_optimiser_group(tiny_overrides) -> None:
    _, datamodule, module = _setup([*tiny_overrides, "method=balanced_mse"])
    sigma = module.part_states["balanced_mse"].sigma
    assert "part_states.balanced_mse.sigma" in module.state_dict()
    before = float(sigma.detach())
    trainer, _, losses = _fit(module, datamodule)
    optimizer = trainer.optimizers[0]
    groups = [g for g in optimizer.param_groups if any(p is sigma for p in g["params"])]
    initial_lr = groups[0]["initial_lr"]  # the scheduler has moved "lr" since
    assert len(groups) == 1 and initial_lr == module.cfg.method.balanced_mse.sigma_lr
    assert initial_lr != module.cfg.optim.lr
    main_group = [g for g in optimizer.param_groups if g is not groups[0]]
    assert all(all(p is not sigma for p in g["params"]) for g in main_group)
    assert float(sigma.detach()) != before and all(torch.isfinite(torch.tensor(losses)))
    fixed = _setup([*tiny_overrides, "method=balanced_mse", "method.balanced_mse.fix_sigma=true"])[
        2
    ]
    assert not fixed.part_states["balanced_mse"].sigma.requires_grad


def test_lds_weights_come_from_the_label_statistics(tiny_overrides) -> None:
    _, datamodule, module = _setup([*tiny_overrides, "method=lds"])
    stats = module.label_stats
    table = module.part_states["lds"].weights
    counts = stats.counts_tensor().float()
    assert torch.isclose((table * counts).sum() / counts.sum(), torch.tensor(1.0))  # mean 1
    # any row, labelled or pseudo-labelled, is weighted by the bin of its score
    batch = next(iter(datamodule.train_dataloader()))
    step = module.train_step_of(batch)
    weights = module.parts[0].sample_weights(module, step)
    assert torch.equal(weights, table[stats.bin_index(step.scores)])
    rare = int(torch.argmin(torch.where(counts > 0, counts, counts.max() + 1)))
    common = int(torch.argmax(counts))
    assert table[rare] > table[common]


def test_score_head_target_follows_model_score_target(tiny_overrides) -> None:
    head = [*tiny_overrides, "method=vanilla", "model.head=score"]
    ranged = _setup(head)[2]
    authors = _setup([*head, "model.score_target=over10"])[2]
    scores = torch.tensor([1.0, 5.5, 10.0])
    assert torch.allclose(ranged.to_unit(scores), torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(authors.to_unit(scores), torch.tensor([0.1, 0.55, 1.0]))
    assert torch.allclose(authors.from_unit(authors.to_unit(scores)), scores)
