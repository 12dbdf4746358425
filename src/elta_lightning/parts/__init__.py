"""Long-tail parts: Lightning callbacks that the model builds from ``method.parts`` and returns
from ``configure_callbacks()`` (see :mod:`elta_lightning.parts.base` for the data flow of one
training step). Importing this package registers every part."""

from elta_lightning.parts.balanced_mse import BalancedMSE, BalancedMSEConfig
from elta_lightning.parts.base import Part, PartContext, TrainStep
from elta_lightning.parts.cmixup import CMixup, CMixupConfig
from elta_lightning.parts.conr import ConR, ConRConfig
from elta_lightning.parts.fds import FDSConfig, FeatureDistributionSmoothing
from elta_lightning.parts.flsa import FLSAConfig, SimilarityAlignment
from elta_lightning.parts.focal_r import FocalR, FocalRConfig
from elta_lightning.parts.ranksim import RankSim, RankSimConfig
from elta_lightning.parts.registry import (
    PARTS,
    build_parts,
    check_parts,
    part_class,
    part_config,
    register_part,
    views_needed,
)
from elta_lightning.parts.reweighting import (
    InvConfig,
    InverseWeighting,
    LabelDistributionSmoothing,
    LDSConfig,
    SqinvConfig,
    SqrtInverseWeighting,
)
from elta_lightning.parts.tfa import FeatureMixup, TFAConfig

__all__ = [
    "PARTS",
    "BalancedMSE",
    "BalancedMSEConfig",
    "CMixup",
    "CMixupConfig",
    "ConR",
    "ConRConfig",
    "FDSConfig",
    "FLSAConfig",
    "FeatureDistributionSmoothing",
    "FeatureMixup",
    "FocalR",
    "FocalRConfig",
    "InvConfig",
    "InverseWeighting",
    "LDSConfig",
    "LabelDistributionSmoothing",
    "Part",
    "PartContext",
    "RankSim",
    "RankSimConfig",
    "SimilarityAlignment",
    "SqinvConfig",
    "SqrtInverseWeighting",
    "TFAConfig",
    "TrainStep",
    "build_parts",
    "check_parts",
    "part_class",
    "part_config",
    "register_part",
    "views_needed",
]
