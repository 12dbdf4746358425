"""The rules a label row must pass before a model sees it, kept in one place.

:func:`bad_label_rows` finds the rows of one split that break each rule. Two callers word what it
finds: ``base.check_labels`` at start-up (stops at the first rule broken) and ``elta prepare``'s
report (``prepare.label_problems_of``: one line per problem row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from elta_lightning.datamodules.labels import LabelTable
from elta_lightning.scales import ScoreScale


@dataclass(frozen=True)
class BadLabelRows:
    """Ascending row indices of one split that break each rule, fields in the order the rules are
    checked; ``first_of[k]`` is the first row with row ``k``'s image id (``k`` itself when none
    comes before), so the first row of a ``repeated`` one can be named too."""

    not_finite: np.ndarray
    out_of_range: np.ndarray
    unsafe_id: np.ndarray
    repeated: np.ndarray
    first_of: np.ndarray


def bad_label_rows(table: LabelTable, scale: ScoreScale) -> BadLabelRows:
    """The rows of ``table`` with a score that is not finite, a finite score outside ``scale``'s
    range, an image id that is empty or leaves the image folder, or an image id an earlier row
    already has."""
    scores = table.scores
    finite = np.isfinite(scores)
    outside = (scores < scale.minimum) | (scores > scale.maximum)
    unsafe = np.array([not is_safe_id(image_id) for image_id in table.image_ids], dtype=bool)
    first_of = first_rows(table.image_ids)
    return BadLabelRows(
        not_finite=np.flatnonzero(~finite),
        out_of_range=np.flatnonzero(finite & outside),
        unsafe_id=np.flatnonzero(unsafe),
        repeated=np.flatnonzero(first_of != np.arange(len(first_of))),
        first_of=first_of,
    )


def is_safe_id(image_id: str) -> bool:
    """A non-empty relative path that stays inside the image folder."""
    path = PurePosixPath(image_id)
    return bool(image_id) and not path.is_absolute() and ".." not in path.parts


def first_rows(image_ids: list[str]) -> np.ndarray:
    """For each row, the index of the first row with the same image id (its own when it is the
    first), found with one sort instead of a Python dict over every row."""
    _, first, inverse = np.unique(np.asarray(image_ids), return_index=True, return_inverse=True)
    return first[inverse]
