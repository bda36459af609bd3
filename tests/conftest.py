"""Shared test set-up.

PROBE_CORE_PATH loads probe_core from a given shared object before any test
imports it: `make asan-test` points it at the AddressSanitizer build so the same
tests exercise the sanitized core.

With CI=true, a skipped test marked `root` or `postgres` fails instead: CI runs
as root with PostgreSQL up, so a skip there means a test silently did not run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_override = os.environ.get("PROBE_CORE_PATH")
if _override:
    _spec = importlib.util.spec_from_file_location("probe_core", _override)
    if _spec is None or _spec.loader is None:
        raise RuntimeError(f"PROBE_CORE_PATH={_override} is not a loadable module")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["probe_core"] = _module
    _spec.loader.exec_module(_module)

FIXTURE_HOSTS = Path(__file__).parent / "fixtures" / "hosts"
MUST_RUN_IN_CI = ("root", "postgres")


@pytest.fixture
def modern_root() -> str:
    return str(FIXTURE_HOSTS / "modern")


@pytest.fixture
def legacy_root() -> str:
    return str(FIXTURE_HOSTS / "legacy")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason="needs root"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    needed = [m for m in MUST_RUN_IN_CI if item.get_closest_marker(m)]
    if needed:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped a {'/'.join(needed)} test under CI=true: it must run in CI ({report.longrepr})"
        )
