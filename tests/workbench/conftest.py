"""A run store made by the real workflow from recorded telemetry (testkit/store.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.store import build
from tests.controller.conftest import base_config


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


# The cgroup the recorded CPU run's plan caps (testkit/windows/cpu_saturation): made for real
# where a test applies and rolls back that step.
PLAN_CGROUP = "/process_api/87de2908c367d08f037ac655769d5a1a"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def acting(data: Path) -> dict[str, Any]:
    """A controller that changes the choose run's host for real once approved, and verifies
    briefly (no collector sends that host's samples after the change: inconclusive soon)."""
    return base_config(
        data,
        workflow={
            "execution": {
                "dry_run": False,
                "allow_safe_reversible": True,
                "local_hosts": ["recorded-choose"],
                "verify_settle_s": 0.0,
                "verify_deadline_s": 2.0,
            }
        },
    )


@pytest.fixture
def plan_cgroup() -> Iterator[Path]:
    """The plan's cgroup, made under the CPU controller (v1, or the v2 tree), removed after;
    yields the file its quota is in."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cgroup")
    v1 = CGROUP_ROOT / "cpu"
    base = v1 if (v1 / "cpu.cfs_quota_us").exists() else CGROUP_ROOT
    path = base / PLAN_CGROUP.lstrip("/")
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path / ("cpu.cfs_quota_us" if base == v1 else "cpu.max")
    finally:
        for d in (path, path.parent):
            with contextlib.suppress(OSError):
                d.rmdir()
