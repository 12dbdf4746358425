"""Lightning callbacks: the long-tail plug-ins (TFA, FLSA) and the APDS pseudo-label round."""

from __future__ import annotations

from omegaconf import DictConfig

from elta_lightning.callbacks.feature_mixup import FeatureMixup
from elta_lightning.callbacks.plugin import PlugIn, require_iaa_module
from elta_lightning.callbacks.pseudo_labels import PseudoLabelSelection, PseudoLabelSelector
from elta_lightning.callbacks.similarity_alignment import SimilarityAlignment

__all__ = [
    "FeatureMixup",
    "PlugIn",
    "PseudoLabelSelection",
    "PseudoLabelSelector",
    "SimilarityAlignment",
    "method_plugins",
    "require_iaa_module",
]


def method_plugins(cfg: DictConfig) -> list[PlugIn]:
    """The plug-ins that ``cfg.method`` switches on, in the order they act in a training step:
    TFA when ``method.tfa.enabled`` (feature transform), FLSA when ``method.flsa.weight > 0``
    (auxiliary loss, so it sees the TFA-augmented batch)."""
    plugins: list[PlugIn] = []
    if cfg.method.tfa.enabled:
        plugins.append(FeatureMixup.from_config(cfg.method.tfa, cfg.seed))
    if cfg.method.flsa.weight > 0:
        plugins.append(SimilarityAlignment.from_config(cfg.method.flsa))
    return plugins
