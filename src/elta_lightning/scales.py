"""Score scales of IAA datasets: rating levels, range, accuracy threshold, common 0..10 mapping."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScoreScale:
    """How a dataset scores its images.

    ``levels`` are the rating levels of a vote distribution (AVA: 1..10, PARA: 1.0..5.0 in 0.5
    steps); ``None`` for datasets with a scalar score only. ``to_common`` multiplies a native score
    into the common 0..10 scale that the ELTA authors' CSV files use (AADB x10, PARA x2, AVA and
    TAD66K x1), so errors can be compared across datasets and ELTA's temperatures mean the same
    thing everywhere. A score counts as "high" for accuracy iff it is strictly above ``threshold``.
    """

    minimum: float
    maximum: float
    threshold: float
    levels: tuple[float, ...] | None = None
    to_common: float = 1.0

    @property
    def has_levels(self) -> bool:
        return self.levels is not None

    @property
    def num_levels(self) -> int:
        if self.levels is None:
            raise ValueError("this score scale has no rating levels (scalar scores only)")
        return len(self.levels)

    def levels_tensor(self, device: torch.device | None = None) -> torch.Tensor:
        """The rating levels as a float tensor of shape (K,)."""
        if self.levels is None:
            raise ValueError("this score scale has no rating levels (scalar scores only)")
        return torch.tensor(self.levels, dtype=torch.float32, device=device)

    def contains(self, score: float) -> bool:
        return self.minimum <= score <= self.maximum


def rating_levels(first: float, last: float, step: float) -> tuple[float, ...]:
    """Evenly spaced rating levels from ``first`` to ``last`` inclusive."""
    count = round((last - first) / step) + 1
    return tuple(round(first + k * step, 6) for k in range(count))


AVA_SCALE = ScoreScale(minimum=1.0, maximum=10.0, threshold=5.0, levels=rating_levels(1, 10, 1))
PARA_SCALE = ScoreScale(
    minimum=1.0, maximum=5.0, threshold=3.0, levels=rating_levels(1, 5, 0.5), to_common=2.0
)
AADB_SCALE = ScoreScale(minimum=0.0, maximum=1.0, threshold=0.5, to_common=10.0)
TAD66K_SCALE = ScoreScale(minimum=1.0, maximum=10.0, threshold=5.0)
