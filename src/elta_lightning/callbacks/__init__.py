"""Lightning callbacks outside the training step: the APDS pseudo-label selection of a
self-training round. (The long-tail parts are callbacks too: :mod:`elta_lightning.parts`.)"""

from elta_lightning.callbacks.pseudo_labels import PseudoLabelSelection, PseudoLabelSelector

__all__ = ["PseudoLabelSelection", "PseudoLabelSelector"]
