"""IAA evaluation metrics on torchmetrics, exact under DDP.

What an evaluation stage reports (see DESIGN.md, "Metrics"): SRCC, PLCC, binary accuracy at the
dataset's threshold, MAE, MSE, EMD (r = 1, 2) where vote distributions exist, MAE per region of
the target score (low / mid / high, cut at the training labels' 20th and 80th percentiles) and,
optionally, MAE per many / medium / few-shot region plus balanced MAE (the DIR protocol on bins of
the target score, with per-bin training counts). Every number is computed over the whole
evaluation set and is the same on 1 and N processes:

* additive metrics keep ``sum`` and ``count`` states (``dist_reduce_fx="sum"``), so the DDP
  reduction is exact (up to float32 summation order);
* SRCC keeps every prediction (torchmetrics ``SpearmanCorrCoef``, ``cat`` states) and PLCC merges
  per-process moments (torchmetrics ``PearsonCorrCoef``);
* the caller must not feed duplicates: evaluate with
  ``lightning.pytorch.overrides.distributed.UnrepeatedDistributedSampler`` (Lightning's default
  ``DistributedSampler`` pads the set with repeated samples). :class:`IndexedCollector` (the
  per-image table) raises on a repeated dataset index, which catches padding.

``update`` methods never read tensor values on the host (no ``.item()``, no branching on values),
so they cost no device synchronisation per evaluation step; ``compute`` syncs across processes.
Scores are on the dataset's native scale; ``IAAMetrics`` also reports MAE on the common 0..10
scale (``mae_common``).

The modules: :mod:`.accuracy` (:class:`ThresholdAccuracy`), :mod:`.emd`
(:class:`EarthMoversDistance`), :mod:`.regions` (the low / mid / high regions and
:class:`RegionMAE`), :mod:`.shots` (score bins, shot regions, :class:`ShotBins` and
:class:`ShotMAE`), :mod:`.collector` (:class:`IndexedCollector`) and :mod:`.iaa`
(:class:`IAAMetrics`, :data:`HIGHER_IS_BETTER` and :func:`best_so_far`); every name is importable
from this package.
"""

from elta_lightning.metrics.accuracy import ThresholdAccuracy, threshold_accuracy
from elta_lightning.metrics.collector import IndexedCollector
from elta_lightning.metrics.emd import EarthMoversDistance, earth_movers_distance
from elta_lightning.metrics.iaa import HIGHER_IS_BETTER, IAAMetrics, best_so_far
from elta_lightning.metrics.regions import (
    REGION_NAMES,
    RegionMAE,
    region_cuts,
    region_mae,
    region_masks,
)
from elta_lightning.metrics.shots import (
    BIN_EDGE_TOLERANCE,
    SHOT_NAMES,
    ShotBins,
    ShotMAE,
    num_score_bins,
    score_bin_counts,
    score_bins,
    shot_mae,
    shot_regions,
)

__all__ = [
    "BIN_EDGE_TOLERANCE",
    "HIGHER_IS_BETTER",
    "REGION_NAMES",
    "SHOT_NAMES",
    "EarthMoversDistance",
    "IAAMetrics",
    "IndexedCollector",
    "RegionMAE",
    "ShotBins",
    "ShotMAE",
    "ThresholdAccuracy",
    "best_so_far",
    "earth_movers_distance",
    "num_score_bins",
    "region_cuts",
    "region_mae",
    "region_masks",
    "score_bin_counts",
    "score_bins",
    "shot_mae",
    "shot_regions",
    "threshold_accuracy",
]
