"""The label table every dataset reader returns: one split's ids, scores and vote distributions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from elta_lightning.errors import EltaError


@dataclass
class LabelTable:
    """Labels of one split, as read from a label file.

    ``image_ids`` are paths relative to the dataset's image folder. ``scores`` are mean scores on
    the dataset's native scale. ``distributions`` (N, K) are normalised vote shares over the
    scale's rating levels, or ``None`` for scalar-score data. ``sources`` names the file and line
    of each row, so later checks (missing image, bad file) can point the user at the row.
    ``extras`` holds optional per-row columns (AVA tags, TAD66K theme, ...).
    """

    image_ids: list[str]
    scores: np.ndarray
    distributions: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)
    extras: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        n = len(self.image_ids)
        if self.scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {self.scores.shape}")
        if self.distributions is not None:
            self.distributions = np.asarray(self.distributions, dtype=np.float64)
            if self.distributions.ndim != 2 or self.distributions.shape[0] != n:
                raise ValueError(
                    f"distributions must have shape ({n}, K), got {self.distributions.shape}"
                )
        if not self.sources:
            self.sources = ["<unknown>"] * n
        if len(self.sources) != n:
            raise ValueError(f"sources must have {n} entries, got {len(self.sources)}")
        for key, values in self.extras.items():
            if len(values) != n:
                raise ValueError(f"extra column {key!r} must have {n} entries, got {len(values)}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def subset(self, indices: np.ndarray | list[int]) -> LabelTable:
        """The rows at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelTable(
            image_ids=[self.image_ids[i] for i in idx],
            scores=self.scores[idx],
            distributions=None if self.distributions is None else self.distributions[idx],
            sources=[self.sources[i] for i in idx],
            extras={k: [v[i] for i in idx] for k, v in self.extras.items()},
        )

    @staticmethod
    def concat(tables: list[LabelTable]) -> LabelTable:
        """Rows of several tables, one after the other (all with or all without distributions)."""
        if not tables:
            raise ValueError("nothing to concatenate")
        with_dist = {t.distributions is not None for t in tables}
        if len(with_dist) != 1:
            raise ValueError("cannot mix tables with and without vote distributions")
        keys = set(tables[0].extras)
        return LabelTable(
            image_ids=[i for t in tables for i in t.image_ids],
            scores=np.concatenate([t.scores for t in tables]),
            distributions=(
                np.concatenate([t.distributions for t in tables]) if with_dist == {True} else None
            ),
            sources=[s for t in tables for s in t.sources],
            extras={k: [v for t in tables for v in t.extras.get(k, [None] * len(t))] for k in keys},
        )


class LabelFileError(EltaError, ValueError):
    """A label file that cannot be used: names the file, the row and what was expected."""
