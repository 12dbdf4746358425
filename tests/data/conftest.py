"""Fixtures: tiny native-layout copies of AVA, AADB, TAD66K and PARA with real JPEGs.

``tiny_ava``, ``tiny_aadb``, ``tiny_tad66k``, ``tiny_para`` build one per test into
``tmp_path``; ``tiny_dataset`` runs a test once per dataset. Each returns a
:class:`tiny_datasets.TinyDataset` with a ready ``cfg`` (``build_datamodule(t.cfg)``), for reader
tests here and for a few training steps through a Trainer elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_datasets import BUILDERS, TinyDataset, build_tiny_dataset


@pytest.fixture
def tiny_ava(tmp_path: Path) -> TinyDataset:
    return build_tiny_dataset("ava", tmp_path / "AVA")


@pytest.fixture
def tiny_aadb(tmp_path: Path) -> TinyDataset:
    return build_tiny_dataset("aadb", tmp_path / "AADB")


@pytest.fixture
def tiny_tad66k(tmp_path: Path) -> TinyDataset:
    return build_tiny_dataset("tad66k", tmp_path / "TAD66K")


@pytest.fixture
def tiny_para(tmp_path: Path) -> TinyDataset:
    return build_tiny_dataset("para", tmp_path / "PARA")


@pytest.fixture(params=sorted(BUILDERS))
def tiny_dataset(request: pytest.FixtureRequest, tmp_path: Path) -> TinyDataset:
    """Each of the four tiny datasets in turn."""
    return build_tiny_dataset(request.param, tmp_path / request.param)
