"""Unit tests of APDS (adaptive pseudo-label distribution sharpening and selection)."""

from __future__ import annotations

import math

import pytest
import torch

from elta_lightning.elta import APDSResult, select_pseudo_labels, sharpen_logits

# Hand computation, logits z1 = [0, 2], z2 = [0, 0.5], levels [0, 10], beta = 1:
#   softmax(z1) = [0.11920292, 0.88079708] -> s1 = 8.8079708
#   softmax(z2) = [0.37754067, 0.62245933] -> s2 = 6.2245933
#   s_bar = 7.5162820, |s_bar - s1| = |s_bar - s2| = 1.2916887
#   factor = exp(1.2916887) = 3.6389265
#   sharpened p1 = softmax([0, 2 * 3.6389265]) = [0.00069019, 0.99930981]
#   sharpened p2 = softmax([0, 0.5 * 3.6389265]) = [0.13949829, 0.86050171]
LOGITS = torch.tensor([[0.0, 2.0], [0.0, 0.5]])
LEVELS = torch.tensor([0.0, 10.0])
UNSHARPENED = torch.tensor([[0.11920292, 0.88079708], [0.37754067, 0.62245933]])
SCORES = torch.tensor([8.8079708, 6.2245933])
SHARPENED = torch.tensor([[0.00069019, 0.99930981], [0.13949829, 0.86050171]])


def test_select_hand_computed():
    res = select_pseudo_labels(LOGITS, LEVELS, beta=1.0, threshold=0.9)
    assert isinstance(res, APDSResult)
    torch.testing.assert_close(res.unsharpened, UNSHARPENED)
    torch.testing.assert_close(res.scores, SCORES)
    torch.testing.assert_close(res.sharpened, SHARPENED, atol=1e-6, rtol=1e-5)
    assert res.selected.dtype == torch.bool
    # Neither unsharpened max (0.881, 0.622) passes 0.9: sharpening lets sample 1 through.
    assert res.selected.tolist() == [True, False]


def test_sharpen_logits_hand_computed():
    torch.testing.assert_close(sharpen_logits(LOGITS, SCORES, beta=1.0), SHARPENED)


def test_sharpen_with_reference_score():
    # z = [0, 1] for both; scores [5, 8], reference 5, beta 0.5:
    #   sample 1: |5 - 5| = 0 -> factor 1 -> softmax([0, 1]) = [0.26894142, 0.73105858]
    #   sample 2: |5 - 8| = 3 -> factor exp(1.5) = 4.4816891
    #             -> softmax([0, 4.4816891]) = [0.01118771, 0.98881229]
    logits = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    out = sharpen_logits(logits, torch.tensor([5.0, 8.0]), beta=0.5, reference_score=5.0)
    expected = torch.tensor([[0.26894142, 0.73105858], [0.01118771, 0.98881229]])
    torch.testing.assert_close(out, expected)


def test_threshold_behaviour():
    assert select_pseudo_labels(LOGITS, LEVELS, 1.0, 0.75).selected.tolist() == [True, True]
    # Sample 2's sharpened max is 0.86050171: kept at 0.8604, dropped at 0.8606.
    assert select_pseudo_labels(LOGITS, LEVELS, 1.0, 0.8604).selected.tolist() == [True, True]
    assert select_pseudo_labels(LOGITS, LEVELS, 1.0, 0.8606).selected.tolist() == [True, False]
    # Without sharpening (beta = 0) only sample 1 passes 0.75.
    res = select_pseudo_labels(LOGITS, LEVELS, 0.0, 0.75)
    torch.testing.assert_close(res.sharpened, res.unsharpened)
    assert res.selected.tolist() == [True, False]


def test_empty_selection_is_valid():
    res = select_pseudo_labels(LOGITS, LEVELS, 1.0, 0.9995)
    assert res.selected.shape == (2,) and not res.selected.any()
    assert res.sharpened.shape == res.unsharpened.shape == (2, 2)


def test_selection_is_strict():
    # Tied logits stay at max 0.5 whatever the sharpening: 0.5 > 0.5 is False.
    logits = torch.tensor([[0.0, 0.0], [0.0, 3.0]])
    res = select_pseudo_labels(logits, LEVELS, 1.25, 0.5)
    assert res.sharpened[0].max().item() == 0.5
    assert res.selected.tolist() == [False, True]


def test_tails_sharpened_more():
    # Same logits, scores at growing distance from the reference: max prob grows.
    logits = torch.tensor([[0.0, 0.3, 0.1]]).repeat(4, 1)
    scores = torch.tensor([5.0, 6.0, 7.5, 9.5])
    peaks = sharpen_logits(logits, scores, beta=1.25, reference_score=5.0).amax(1)
    assert torch.all(peaks[1:] > peaks[:-1])
    torch.testing.assert_close(peaks[0], torch.softmax(logits[0], 0).max())


def test_chunks_match_full_set_with_reference_score():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 10, generator=gen) * 2
    levels = torch.arange(1.0, 11.0)
    full = select_pseudo_labels(logits, levels, 1.25, 0.75)
    s_bar = full.scores.mean()
    chunk = select_pseudo_labels(logits[:5], levels, 1.25, 0.75, reference_score=s_bar)
    torch.testing.assert_close(chunk.sharpened, full.sharpened[:5])
    assert torch.equal(chunk.selected, full.selected[:5])
    # Without the reference the chunk's own mean differs and so does the sharpening.
    alone = select_pseudo_labels(logits[:5], levels, 1.25, 0.75)
    assert not torch.allclose(alone.sharpened, full.sharpened[:5])


def test_large_beta_stays_finite():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0], [-3.0, 0.0, 3.0]])
    res = select_pseudo_labels(logits, torch.tensor([0.0, 5.0, 10.0]), 100.0, 0.75)
    assert torch.isfinite(res.sharpened).all()
    torch.testing.assert_close(res.sharpened.sum(1), torch.ones(3))


@pytest.mark.parametrize("beta", [-0.1, math.nan, math.inf])
def test_bad_beta_raises(beta):
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        select_pseudo_labels(LOGITS, LEVELS, beta, 0.75)
    with pytest.raises(ValueError, match="beta"):
        sharpen_logits(LOGITS, SCORES, beta)


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, -0.2, math.nan])
def test_bad_threshold_raises(threshold):
    with pytest.raises(ValueError, match="threshold must lie strictly between 0 and 1"):
        select_pseudo_labels(LOGITS, LEVELS, 1.25, threshold)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="levels must have shape"):
        select_pseudo_labels(LOGITS, torch.arange(3.0), 1.25, 0.75)
    with pytest.raises(ValueError, match="logits must have shape"):
        select_pseudo_labels(LOGITS[0], LEVELS, 1.25, 0.75)
    with pytest.raises(ValueError, match="scores must have shape"):
        sharpen_logits(LOGITS, torch.rand(3), 1.25)
