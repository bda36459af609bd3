"""nbval runs the notebooks against a store the real workflow made from recorded
telemetry (testkit/store.py). Built at configure time: the kernels start
before any fixture runs, and read where it is from the environment."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from testkit.store import build

    root = Path(tempfile.mkdtemp(prefix="incidentlab-nb-"))
    config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))
    data = root / "data"
    ids = build(data)
    os.environ["INCIDENTLAB_SOURCE"] = str(data)
    os.environ["INCIDENTLAB_RUN_ID"] = ids["completed"]
