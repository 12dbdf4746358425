"""``method.flsa.gather=true`` gives single-GPU FLSA under 2-process CPU DDP (gloo, Lightning).

The Trainers run in a subprocess (``ddp_flsa_run.py``): a fresh process per test module avoids
EADDRINUSE between DDP Trainers in one pytest process and keeps the fork away from pytest. The
script fits one step of an IAAModule whose backbone is ``features = X @ W.T`` (``W`` its only
parameter) and whose head is a constant (no gradient), with FLSA as the model's part
(``method.parts=[flsa]``, configured by the node ``method.flsa``). Each of the 2 ranks
holds B = 5 of the N = 10 rows; the scores have ties within and across ranks.

Reference: the single-process FLSA loss of the whole batch of 10 (in the order the gather
concatenates it, rank 0's rows then rank 1's), in float64, and its gradients w.r.t. the features
and ``W``. Why DDP then gives exactly the single-process gradient:

* with ``sync_grads=True`` the all_gather's backward sums, over the ranks, the gradients that
  every rank's (identical, global) loss sends to a rank's slice, so a rank's local features get
  ``world_size * dL/df_local``;
* DDP all-reduces the parameter gradients and divides by the world size (it averages), so
  ``W.grad = (1/world) * sum_r X_r^T (world * dL/df_r) = sum_r X_r^T dL/df_r = dL/dW``: the
  single-process gradient, the same on every rank.

Without gather each rank's loss is the loss of its own half (the authors' semantics) and
``W.grad`` is the mean of the two halves' gradients; both differ from the global ones, so the
test fails if ``gather`` silently does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from subprocess_env import run_ddp_script

from elta_lightning.elta import flsa_loss

SCRIPT = Path(__file__).with_name("ddp_flsa_run.py")
WORLD, PER_RANK, D_IN, D = 2, 5, 6, 8
NUM_SAMPLES = WORLD * PER_RANK
#: float32 (the runs) against float64 (the reference); gradient entries are about 1e-2.
RTOL, ATOL = 1e-5, 1e-7


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_flsa")
    run_ddp_script(SCRIPT, out)
    return out


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _ranks(out: Path, run: str) -> list[dict]:
    reports = [_load(out / run / f"rank{r}.json") for r in range(WORLD)]
    assert [r["global_rank"] for r in reports] == list(range(WORLD))
    assert all(r["world_size"] == WORLD and r["strategy"] == "DDPStrategy" for r in reports)
    assert all(r["parts"] == ["flsa"] for r in reports)  # the model's part, a Trainer callback
    return reports


def _reference(out: Path, index: list[int]) -> dict[str, torch.Tensor]:
    """FLSA of the rows ``index`` (in that order) on one process, in float64, with gradients."""
    data = _load(out / "data.json")
    x = torch.tensor(data["x"], dtype=torch.float64)[index]
    scores = torch.tensor(data["score"], dtype=torch.float64)[index]
    w = torch.tensor(data["w"], dtype=torch.float64, requires_grad=True)
    features = x @ w.T
    features.retain_grad()
    loss = flsa_loss(features, scores)
    loss.backward()
    return {
        "loss": loss.detach(),
        "features": features.detach(),
        "f_grad": features.grad,
        "w_grad": w.grad,
    }


def _close(actual: list, expected: torch.Tensor, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(actual), expected.numpy(), rtol=RTOL, atol=ATOL, err_msg=what
    )


def test_data_has_ties_and_per_rank_ranges_differ_from_the_global_one(ddp_results: Path):
    data = _load(ddp_results / "data.json")
    scores = np.asarray(data["score"])
    assert np.asarray(data["x"]).shape == (NUM_SAMPLES, D_IN)
    assert np.asarray(data["w"]).shape == (D, D_IN)
    ranks = _ranks(ddp_results, "ddp2_gather")
    halves = [scores[r["index"]] for r in ranks]
    assert sorted(ranks[0]["index"] + ranks[1]["index"]) == list(range(NUM_SAMPLES))  # disjoint
    assert all(len(np.unique(h)) < PER_RANK for h in halves)  # ties within each rank
    assert set(halves[0]) & set(halves[1])  # and across ranks
    global_range = np.ptp(scores)
    assert all(0 < np.ptp(h) < global_range for h in halves)


def test_gather_loss_is_the_whole_batch_loss_on_every_rank(ddp_results: Path):
    ranks = _ranks(ddp_results, "ddp2_gather")
    reference = _reference(ddp_results, ranks[0]["index"] + ranks[1]["index"])
    for rank, report in enumerate(ranks):
        assert report["flsa"] == pytest.approx(float(reference["loss"]), rel=1e-6, abs=0), rank
    assert ranks[1]["flsa"] == pytest.approx(ranks[0]["flsa"], rel=1e-7, abs=0)


def test_gather_gradients_after_ddp_averaging_are_the_single_process_gradients(
    ddp_results: Path,
):
    ranks = _ranks(ddp_results, "ddp2_gather")
    reference = _reference(ddp_results, ranks[0]["index"] + ranks[1]["index"])
    for rank, report in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        _close(report["features"], reference["features"][rows], f"features of rank {rank}")
        # the all_gather backward sums the gradient of the same global loss from both ranks;
        # DDP's averaging divides by the world size: the effective gradient is the reference's
        _close(
            np.asarray(report["features_grad"]) / WORLD,
            reference["f_grad"][rows],
            f"features grad of rank {rank} / world size",
        )
        _close(report["w_grad"], reference["w_grad"], f"W.grad of rank {rank}")
    assert ranks[0]["w_grad"] == ranks[1]["w_grad"]  # DDP: the same averaged gradient everywhere
    # and DDP's average of the ranks' local W gradients is the reference dL/dW
    x = torch.tensor(_load(ddp_results / "data.json")["x"], dtype=torch.float64)
    local_w_grads = [
        torch.tensor(r["features_grad"], dtype=torch.float64).T @ x[r["index"]] for r in ranks
    ]
    _close(sum(local_w_grads) / WORLD, reference["w_grad"], "mean of the local W gradients")


def test_without_gather_each_rank_has_the_loss_of_its_half(ddp_results: Path):
    ranks = _ranks(ddp_results, "ddp2_local")
    whole = _reference(ddp_results, ranks[0]["index"] + ranks[1]["index"])
    halves = [_reference(ddp_results, r["index"]) for r in ranks]
    for rank, (report, half) in enumerate(zip(ranks, halves)):
        assert report["flsa"] == pytest.approx(float(half["loss"]), rel=1e-6, abs=0), rank
        assert abs(report["flsa"] - float(whole["loss"])) > 0.1, rank  # 0.47 vs 0.61
        _close(report["features_grad"], half["f_grad"], f"features grad of rank {rank}")
    # DDP averages the two halves' gradients, which is not the gradient of the whole batch
    mean_half_grad = (halves[0]["w_grad"] + halves[1]["w_grad"]) / WORLD
    for rank, report in enumerate(ranks):
        _close(report["w_grad"], mean_half_grad, f"W.grad of rank {rank}")
    gap = (torch.tensor(ranks[0]["w_grad"], dtype=torch.float64) - whole["w_grad"]).abs().max()
    assert gap > 0.1 * whole["w_grad"].abs().max()


def test_gather_on_one_process_is_the_plain_loss(ddp_results: Path):
    single = _load(ddp_results / "single_gather" / "rank0.json")
    assert single["world_size"] == 1 and single["index"] == list(range(NUM_SAMPLES))
    reference = _reference(ddp_results, single["index"])
    assert single["flsa"] == pytest.approx(float(reference["loss"]), rel=1e-6, abs=0)
    _close(single["features_grad"], reference["f_grad"], "features grad")
    _close(single["w_grad"], reference["w_grad"], "W.grad")
    ddp = _ranks(ddp_results, "ddp2_gather")  # same loss and W gradient as the 2-process run
    assert ddp[0]["flsa"] == pytest.approx(single["flsa"], rel=1e-6, abs=0)
    np.testing.assert_allclose(ddp[0]["w_grad"], single["w_grad"], rtol=RTOL, atol=ATOL)
