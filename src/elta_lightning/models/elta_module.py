"""ELTAModule: the vanilla IAA model with ELTA's training parts (TFA, FLSA) attached."""

from __future__ import annotations

from typing import Any

from elta_lightning.callbacks import PlugIn, method_plugins
from elta_lightning.models.module import IAAModule


class ELTAModule(IAAModule):
    """IAAModule + TFA (feature transform ``tfa``) + FLSA (auxiliary loss ``flsa``), switched on by
    ``method.tfa.enabled`` and ``method.flsa.weight > 0`` of its config (``method=elta`` turns on
    both), so an ablation is one key away. It attaches the same plug-ins that the Trainer
    callbacks are (:func:`elta_lightning.callbacks.method_plugins`), so it needs no callbacks: a
    plain ``Trainer().fit(ELTAModule(...))`` trains ELTA. The parts have no weights: an ELTA
    checkpoint loads into IAAModule too (for test and predict, where they do nothing). APDS, the
    self-training round, runs outside the module (``elta self-train``)."""

    def __init__(
        self,
        config: dict[str, Any],
        scale: dict[str, Any],
        region_cuts: tuple[float, float],
        load_pretrained: bool = True,
    ) -> None:
        super().__init__(config, scale, region_cuts, load_pretrained)
        self.elta_parts: list[PlugIn] = method_plugins(self.cfg)
        for part in self.elta_parts:
            part.attach(self)

    def setup(self, stage: str) -> None:
        """Re-attach the parts for each fit (TFA starts its seeded random stream afresh)."""
        if stage == "fit":
            for part in self.elta_parts:
                part.attach(self)
