"""``elta compare``: one report over finished run folders (no W&B server needed).

Reads each run's ``config.yaml``, ``metrics.json``, ``predictions.csv`` and ``run_notes.json``
and writes one folder: ``report.md`` (the table and the plots), ``results.csv`` (one row per run,
one per method) and four PNG plots.

Why a paired bootstrap: ELTA's published gain over the next method is about 0.01 SRCC and
few-shot errors rest on a handful of images, so a table of means says nothing about which
differences are noise. Every method is tested on the same images, so the difference to the
reference is resampled over those images (the same resampled images for both methods), which
cancels the part of the noise that the two share. The procedure, exactly
(:mod:`.statistics`: :func:`bootstrap_metrics`, :func:`paired_difference`,
:func:`percentile_interval`):

1. the test images are the rows of ``predictions.csv`` sorted by ``image_id``; every run of a
   comparison must have the same images with the same true scores, else the runs are refused;
2. ``rng = numpy.random.default_rng(seed)``; resample ``r`` is row ``r`` of
   ``rng.integers(0, N, size=(resamples, N))`` (drawn in blocks of :data:`.statistics.BLOCK`
   rows, the same stream), N image indices drawn with replacement, shared by every method and
   every seed;
3. each metric of each run is computed on each resample (an image drawn k times counts k times;
   SRCC uses average ranks of the resampled values, as ``scipy.stats.spearmanr``);
4. for method A and reference R with the seeds S that both ran, the difference in resample r is
   ``mean over s in S of [metric(A_s, r) - metric(R_s, r)]`` (pooled over seeds);
5. the 95 % interval is the 2.5th and 97.5th percentile (numpy's linear interpolation) of those
   differences over the resamples where the metric is defined; the point estimate is the same
   mean difference on the full test set. An interval that contains 0 is marked "≈".

The interval is the test-set sampling noise of the seed-averaged difference; training noise
between seeds shows in the ``± std`` columns, not in the interval.

The modules: :mod:`.metric_rows` names the compared metrics; :mod:`.runs` finds, reads and checks
the run folders; :mod:`.statistics` holds the bootstrap and the metrics (pure functions);
:mod:`.group` compares the runs of one group; :mod:`.tables` and :mod:`.plots` show a group;
:mod:`.report` writes the report folder.
"""

from elta_lightning.comparison.report import ComparisonReport, compare_runs
from elta_lightning.comparison.runs import ComparisonError

__all__ = ["ComparisonError", "ComparisonReport", "compare_runs"]
