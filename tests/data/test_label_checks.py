"""The label rules in one place (``bad_label_rows``) and the two callers that word them: the
start-up check (first rule broken) and ``elta prepare``'s report (every problem row)."""

from __future__ import annotations

import numpy as np
import pytest

from elta_lightning.datamodules.base import check_labels
from elta_lightning.datamodules.label_checks import bad_label_rows
from elta_lightning.datamodules.labels import LabelFileError, LabelTable
from elta_lightning.datamodules.prepare import label_problems_of
from elta_lightning.scales import ScoreScale

SCALE = ScoreScale(minimum=1.0, maximum=10.0, threshold=5.0)
IDS = ["a.jpg", "", "/abs.jpg", "x/../../y.jpg", "a.jpg", "b.jpg", "a.jpg"]


def table(scores: list[float], ids: list[str] = IDS) -> LabelTable:
    return LabelTable(ids, np.asarray(scores), sources=[f"l.csv:{k + 2}" for k in range(len(ids))])


def test_each_rule_finds_its_rows() -> None:
    bad = bad_label_rows(table([5, float("nan"), float("inf"), 0, 11, 5, 5]), SCALE)
    assert bad.not_finite.tolist() == [1, 2]
    assert bad.out_of_range.tolist() == [3, 4]  # finite only: inf is not also out of range
    assert bad.unsafe_id.tolist() == [1, 2, 3]
    assert bad.repeated.tolist() == [4, 6]
    assert bad.first_of[bad.repeated].tolist() == [0, 0]


def test_an_empty_table_breaks_no_rule() -> None:
    bad = bad_label_rows(table([], ids=[]), SCALE)
    assert all(rows.size == 0 for rows in (bad.not_finite, bad.repeated, bad.first_of))


@pytest.mark.parametrize(
    ("scores", "pattern"),
    [
        ([5, float("nan"), float("inf"), 0, 11, 5, 5], r"2 row\(s\) with a score that is not a"),
        ([5, 5, 5, 0, 11, 5, 5], r"2 row\(s\) with a score outside \[1.0, 10.0\]: l.csv:5"),
        ([5] * 7, r"3 row\(s\) whose image id is empty or leaves.*: l.csv:3 \(''\)"),
    ],
)
def test_check_labels_stops_at_the_first_rule_broken(scores: list[float], pattern: str) -> None:
    with pytest.raises(LabelFileError, match=rf"^train split: {pattern}"):
        check_labels(table(scores), SCALE, "train")


def test_check_labels_names_the_first_row_of_each_duplicated_id() -> None:
    ids = ["a.jpg", "b.jpg", "a.jpg", "b.jpg", "a.jpg"]
    message = r"^val split: 2 row\(s\) whose image id appears more than once: l.csv:2 .*l.csv:3 "
    with pytest.raises(LabelFileError, match=message):
        check_labels(table([5] * 5, ids), SCALE, "val")


def test_prepare_lists_every_problem_of_a_row_in_rule_order() -> None:
    problems = label_problems_of(table([5, float("nan"), 5, 0, 11, 5, 5]), SCALE, "test")
    assert problems == [
        "test: l.csv:3 (''): score nan is not a finite number",
        "test: l.csv:3 (''): image id is empty or leaves the image folder",
        "test: l.csv:4 ('/abs.jpg'): image id is empty or leaves the image folder",
        "test: l.csv:5 ('x/../../y.jpg'): score 0 outside [1, 10]",
        "test: l.csv:5 ('x/../../y.jpg'): image id is empty or leaves the image folder",
        "test: l.csv:6 ('a.jpg'): score 11 outside [1, 10]",
        "test: l.csv:6 ('a.jpg'): duplicate image id (first at l.csv:2)",
        "test: l.csv:8 ('a.jpg'): duplicate image id (first at l.csv:2)",
    ]
