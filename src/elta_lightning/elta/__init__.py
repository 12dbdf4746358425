"""ELTA's three parts as pure tensor functions: TFA (feature mixup), FLSA (loss), APDS (filter).

All temperatures and ``beta`` act on scores on the COMMON 0..10 scale; callers convert native
scores with the dataset's ``to_common`` factor first.
"""

from elta_lightning.elta.apds import APDSResult, select_pseudo_labels, sharpen_logits
from elta_lightning.elta.flsa import flsa_loss
from elta_lightning.elta.tfa import (
    TFAResult,
    resolve_num_mixed,
    sample_mix_pairs,
    tfa_mix,
    tfa_sampling_logits,
    tfa_sampling_probabilities,
)

__all__ = [
    "APDSResult",
    "TFAResult",
    "flsa_loss",
    "resolve_num_mixed",
    "sample_mix_pairs",
    "select_pseudo_labels",
    "sharpen_logits",
    "tfa_mix",
    "tfa_sampling_logits",
    "tfa_sampling_probabilities",
]
