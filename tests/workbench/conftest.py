"""A run store made by the real workflow from recorded telemetry (testkit/store.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testkit.store import build


@pytest.fixture(scope="session")
def built_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    data = tmp_path_factory.mktemp("store") / "data"
    return data, build(data)


@pytest.fixture
def store(built_store: tuple[Path, dict[str, str]], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy per test: a test that approves changes its copy only."""
    data, ids = built_store
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy, ids
