"""DataModules of the IAA data sets, by config name."""

from __future__ import annotations

from elta_lightning.config import ConfigError, DataConfig
from elta_lightning.datamodules.aadb import AADBDataModule
from elta_lightning.datamodules.ava import AVADataModule
from elta_lightning.datamodules.base import IAADataModule
from elta_lightning.datamodules.para import PARADataModule
from elta_lightning.datamodules.synthetic import SyntheticDataModule
from elta_lightning.datamodules.tad66k import TAD66KDataModule

DATAMODULES: dict[str, type[IAADataModule]] = {
    "synthetic": SyntheticDataModule,
    "ava": AVADataModule,
    "aadb": AADBDataModule,
    "tad66k": TAD66KDataModule,
    "para": PARADataModule,
}


def build_datamodule(cfg: DataConfig) -> IAADataModule:
    """The DataModule named by ``cfg.name``."""
    if cfg.name not in DATAMODULES:
        raise ConfigError(f"data.name: unknown data set {cfg.name!r}; known: {sorted(DATAMODULES)}")
    return DATAMODULES[cfg.name](cfg)
