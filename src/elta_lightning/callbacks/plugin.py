"""The shared shape of the long-tail plug-ins: a Lightning callback that, for a fit, attaches a
feature transform or an auxiliary loss to an IAAModule and removes it afterwards."""

from __future__ import annotations

import lightning.pytorch as pl

from elta_lightning.models.module import IAAModule


class PlugIn(pl.Callback):
    """Attaches itself to the fitted module in ``setup("fit")``, detaches in ``teardown``.

    Subclasses implement :meth:`attach` / :meth:`detach` (register in, remove from the
    module's ``feature_transforms`` or ``auxiliary_losses`` under :attr:`name`); a module can
    also call :meth:`attach` itself, without a Trainer callback (see ELTAModule).
    """

    name: str

    def attach(self, module: IAAModule) -> None:
        raise NotImplementedError

    def detach(self, module: IAAModule) -> None:
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.attach(require_iaa_module(pl_module))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.detach(require_iaa_module(pl_module))


def require_iaa_module(module: pl.LightningModule) -> IAAModule:
    """``module`` itself if it is an IAAModule (plug-ins need its hooks), else ``TypeError``."""
    if not isinstance(module, IAAModule):
        raise TypeError(
            f"ELTA plug-ins attach to an IAAModule (or a subclass), got {type(module).__name__}"
        )
    return module
