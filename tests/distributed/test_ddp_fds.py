"""FDS statistics under 2-process CPU DDP (gloo, Lightning) are those of all rows on one process.

The Trainers run in a subprocess (``ddp_fds_run.py``): a fresh process per test module avoids
EADDRINUSE between DDP Trainers in one pytest process and keeps the fork away from pytest. The
script trains an IAAModule with ``method.parts=[fds]`` for 2 epochs on N = 16 rows with fixed
features (different in each epoch; the backbone is a parameter-free lookup), on 2 processes
(each rank: its 8 rows in 2 steps of 4), on 1 process (all 16 rows in 4 steps), and on 2
processes with ``FDSState.reduce_epoch`` made a no-op (the mutant without the all-reduce). It
writes, per rank and epoch, the rank's local epoch sums just before the part's epoch-end hook and
every buffer of ``part.state`` after it.

Checks:

* each rank's local sums are the float64 sums of exactly its own rows (before the all-reduce);
* after each epoch every buffer of ``part.state`` is exactly equal on both ranks;
* the 2-process statistics equal the 1-process ones, and both equal a float64 numpy reference of
  the FDS update over all 16 rows (per-bin moments, momentum update, reflect-padded smoothing);
* the data tell the all-reduce apart: each shard alone gives other statistics than all rows,
  and the mutant run (no all-reduce) does fail the checks above.

Tolerance: the epoch sums are float64 (rank sums added by the all-reduce on 2 processes,
sequential sums on 1 process: they agree to ~1e-16 relative); the part turns them into float32
moments, whose momentum update and smoothing run in float32. So the 2-process and 1-process
buffers agree to a few float32 ulps: ``rtol = atol = 1e-6`` (values are O(1), up to ~7; one
float32 ulp at 4 is 4.8e-7). The float64 numpy reference differs from the float32 buffers by the
same kind of rounding and gets the same tolerance. Between the two ranks no tolerance: both
update from the same all-reduced sums with the same code, so they must agree bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from subprocess_env import run_ddp_script

SCRIPT = Path(__file__).with_name("ddp_fds_run.py")
WORLD, STEPS, BATCH, EPOCHS = 2, 2, 4, 2
NUM_SAMPLES = WORLD * STEPS * BATCH
NUM_BINS = 10
BIN_EDGE_TOLERANCE = 1e-3  # elta_lightning.metrics.BIN_EDGE_TOLERANCE
#: 2 processes vs 1 process and vs the float64 reference (see the module docstring).
RTOL, ATOL = 1e-6, 1e-6
STATS = ("running_mean", "running_var", "smoothed_mean", "smoothed_var")
LOCAL = ("epoch_count", "epoch_sum", "epoch_sum_sq")
BUFFERS = {"kernel", "updates", *STATS, *LOCAL}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_fds")
    run_ddp_script(SCRIPT, out)
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _data(out: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Features (EPOCHS, N, D) and the label bin of every row."""
    data = _load(out / "data.json")
    features = np.asarray(data["features"], dtype=np.float64)
    scores = np.asarray(data["score"], dtype=np.float64)
    width = data["bin_width"]  # TAD66K: to_common = 1
    bins = np.clip(np.floor(scores / width + BIN_EDGE_TOLERANCE), 0, NUM_BINS - 1).astype(int)
    return features, bins, data


def _ranks(out: Path, run: str) -> list[dict]:
    reports = [_load(out / run / f"rank{r}.json") for r in range(WORLD)]
    assert [r["global_rank"] for r in reports] == list(range(WORLD))
    assert all(r["world_size"] == WORLD and r["strategy"] == "DDPStrategy" for r in reports)
    assert all(len(r["epochs"]) == EPOCHS for r in reports)
    return reports


def _single(out: Path) -> dict:
    report = _load(out / "single" / "rank0.json")
    assert report["world_size"] == 1 and len(report["epochs"]) == EPOCHS
    return report


def _rows(epoch: dict) -> list[int]:
    return [i for step in epoch["steps"] for i in step]


def _sums(features: np.ndarray, bins: np.ndarray, rows: list[int]) -> dict[str, np.ndarray]:
    """Per-bin count, sum and sum of squares of ``features[rows]`` (N, D), float64."""
    dim = features.shape[1]
    count, total, total_sq = (
        np.zeros(NUM_BINS),
        np.zeros((NUM_BINS, dim)),
        np.zeros((NUM_BINS, dim)),
    )
    for i in rows:
        count[bins[i]] += 1
        total[bins[i]] += features[i]
        total_sq[bins[i]] += features[i] ** 2
    return {"epoch_count": count, "epoch_sum": total, "epoch_sum_sq": total_sq}


def _smooth(stats: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Cross-correlation over the bins with reflect padding (``F.pad(mode='reflect')``)."""
    half = (len(kernel) - 1) // 2
    padded = np.pad(stats, ((half, half), (0, 0)), mode="reflect")
    return sum(k * padded[j : j + len(stats)] for j, k in enumerate(kernel))


def _reference(out: Path, rows_of_epoch: list[list[int]], kernel: np.ndarray) -> list[dict]:
    """The FDS statistics after each epoch in float64 numpy, from the rows ``rows_of_epoch``."""
    features, bins, data = _data(out)
    config = _single(out)["config"]
    momentum = config["momentum"]
    dim = features.shape[2]
    running_mean, running_var = np.zeros((NUM_BINS, dim)), np.ones((NUM_BINS, dim))
    after = []
    for epoch, rows in enumerate(rows_of_epoch):
        sums = _sums(features[epoch], bins, rows)
        n = sums["epoch_count"][:, None]
        present = n[:, 0] > 0
        mean = sums["epoch_sum"] / np.maximum(n, 1)
        divisor = np.where(n > 1, n - 1, 1)  # unbiased; a single row: biased (0)
        var = np.maximum((sums["epoch_sum_sq"] - n * mean**2) / divisor, 0)
        m = 0.0 if epoch == 0 else momentum
        running_mean = np.where(present[:, None], (1 - m) * mean + m * running_mean, running_mean)
        running_var = np.where(present[:, None], (1 - m) * var + m * running_var, running_var)
        after.append(
            {
                "running_mean": running_mean,
                "running_var": running_var,
                "smoothed_mean": _smooth(running_mean, kernel),
                "smoothed_var": _smooth(running_var, kernel),
                "present": present,
            }
        )
    return after


def _close(actual, expected, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=RTOL, atol=ATOL, err_msg=what
    )


def _kernel(report: dict) -> np.ndarray:
    return np.asarray(report["epochs"][0]["state"]["kernel"], dtype=np.float64)


def test_ranks_see_disjoint_shares_with_shared_and_rank_only_bins(ddp_results: Path):
    features, bins, _ = _data(ddp_results)
    assert features.shape[:2] == (EPOCHS, NUM_SAMPLES)
    assert not np.allclose(features[0], features[1])  # the second update is not a repeat
    ranks = _ranks(ddp_results, "ddp2")
    for epoch in range(EPOCHS):
        shares = [_rows(r["epochs"][epoch]) for r in ranks]
        assert all(len(r["epochs"][epoch]["steps"]) == STEPS for r in ranks)  # several steps
        assert sorted(shares[0] + shares[1]) == list(range(NUM_SAMPLES))  # disjoint, complete
        assert shares == [list(range(r, NUM_SAMPLES, WORLD)) for r in range(WORLD)]
    rank_bins = [set(bins[_rows(r["epochs"][0])]) for r in ranks]
    assert rank_bins[0] & rank_bins[1]  # bins fed by both ranks
    assert rank_bins[0] - rank_bins[1] and rank_bins[1] - rank_bins[0]  # and by one rank only
    assert (np.bincount(bins, minlength=NUM_BINS) == 1).sum() >= 2  # single-row bins (var 0)
    single = _single(ddp_results)
    assert all(len(e["steps"]) == NUM_SAMPLES // BATCH for e in single["epochs"])
    assert all(sorted(_rows(e)) == list(range(NUM_SAMPLES)) for e in single["epochs"])


@pytest.mark.parametrize("rank", range(WORLD))
def test_each_rank_collects_the_features_of_its_own_rows(ddp_results: Path, rank: int):
    """Before the all-reduce a rank's epoch sums are those of the rows it trained on, and only
    those (nothing of the other rank's rows, nothing lost between its steps).

    DDP (``broadcast_buffers=True``, Lightning's default) copies rank 0's buffers to every rank
    before each forward; if the part's epoch sums are among them, rank 1 ends an epoch with rank
    0's sums of its earlier steps plus its own last step, and this check fails for rank 1."""
    features, bins, _ = _data(ddp_results)
    report = _ranks(ddp_results, "ddp2")[rank]
    for epoch, record in enumerate(report["epochs"]):
        expected = _sums(features[epoch], bins, _rows(record))
        local = record["local"]
        assert local["epoch_count"] == expected["epoch_count"].tolist(), (rank, epoch)
        for name in ("epoch_sum", "epoch_sum_sq"):
            np.testing.assert_allclose(
                local[name], expected[name], rtol=1e-12, atol=1e-12, err_msg=f"{name} {epoch}"
            )


def test_every_buffer_is_identical_on_both_ranks(ddp_results: Path):
    ranks = _ranks(ddp_results, "ddp2")
    for epoch in range(EPOCHS):
        states = [r["epochs"][epoch]["state"] for r in ranks]
        assert set(states[0]) == BUFFERS
        for name in sorted(BUFFERS):
            assert states[0][name] == states[1][name], (epoch, name)  # bit for bit
        assert states[0]["updates"] == epoch + 1
        for name in LOCAL:  # reset for the next epoch
            assert not np.asarray(states[0][name]).any(), (epoch, name)


def test_two_processes_give_the_statistics_of_one_process_over_all_rows(ddp_results: Path):
    ranks = _ranks(ddp_results, "ddp2")
    single = _single(ddp_results)
    for epoch in range(EPOCHS):
        one = single["epochs"][epoch]["state"]
        assert one["updates"] == epoch + 1
        for name in ("kernel", *STATS):
            for rank, report in enumerate(ranks):
                state = report["epochs"][epoch]["state"]
                _close(state[name], np.asarray(one[name]), f"{name} epoch {epoch} rank {rank}")


@pytest.mark.parametrize("run", ["single", "ddp2"])
def test_statistics_are_the_fds_update_over_all_rows(ddp_results: Path, run: str):
    report = _single(ddp_results) if run == "single" else _ranks(ddp_results, run)[0]
    every_row = [list(range(NUM_SAMPLES))] * EPOCHS
    reference = _reference(ddp_results, every_row, _kernel(report))
    for epoch, expected in enumerate(reference):
        state = report["epochs"][epoch]["state"]
        for name in STATS:
            _close(state[name], expected[name], f"{run}: {name} after epoch {epoch}")


def test_each_shard_alone_gives_other_statistics(ddp_results: Path):
    """So the checks above fail if a rank's statistics come from its own rows only."""
    single = _single(ddp_results)
    kernel = _kernel(single)
    whole = _reference(ddp_results, [list(range(NUM_SAMPLES))] * EPOCHS, kernel)
    for rank in range(WORLD):
        shard = _reference(ddp_results, [list(range(rank, NUM_SAMPLES, WORLD))] * EPOCHS, kernel)
        for epoch in range(EPOCHS):
            assert (shard[epoch]["present"] != whole[epoch]["present"]).any()
            for name in STATS:
                gap = np.abs(shard[epoch][name] - whole[epoch][name]).max()
                assert gap > 0.1, (rank, epoch, name, gap)


def test_without_the_all_reduce_the_checks_fail(ddp_results: Path):
    """The mutant run (``reduce_epoch`` a no-op): the ranks disagree and differ from one process
    far beyond the tolerance, and rank 0 keeps the statistics of its own rows."""
    mutant = _ranks(ddp_results, "ddp2_no_reduce")
    single = _single(ddp_results)
    kernel = _kernel(single)
    rank0_only = _reference(ddp_results, [list(range(0, NUM_SAMPLES, WORLD))] * EPOCHS, kernel)
    for epoch in range(EPOCHS):
        states = [r["epochs"][epoch]["state"] for r in mutant]
        one = single["epochs"][epoch]["state"]
        for name in STATS:
            assert states[0][name] != states[1][name], (epoch, name)
            for state in states:
                gap = np.abs(np.asarray(state[name]) - np.asarray(one[name])).max()
                assert gap > 1e3 * (ATOL + RTOL * np.abs(one[name]).max()), (epoch, name, gap)
            _close(states[0][name], rank0_only[epoch][name], f"mutant rank 0 {name} {epoch}")
