"""nbval compares the notebooks' outputs: a stored output whose most likely cause differs
from what the notebook now prints fails the run; the stored outputs as committed pass.
nbval runs in a process of its own on a copy of the notebook, against the fixture store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
Store = tuple[Path, dict[str, str]]


def nbval(notebook: Path, store: Store) -> subprocess.CompletedProcess[str]:
    data, ids = store
    cfg = notebook.parent / "sanitize.cfg"
    shutil.copy(NOTEBOOKS / "sanitize.cfg", cfg)
    env = os.environ | {"INCIDENTLAB_SOURCE": str(data), "INCIDENTLAB_RUN_ID": ids["completed"]}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull]
    argv += ["--rootdir", str(notebook.parent), "--nbval", str(notebook), "--nbval-sanitize-with", str(cfg)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def plain(text: str) -> str:
    return text.replace("\\_", "_")


# Where each notebook prints the most likely cause, and the MIME type it prints it as.
CAUSE_CELLS = {
    "postmortem.ipynb": ("pm.root_cause(f)", "text/markdown"),
    "investigate.ipynb": ("wb.hypotheses(run_id)", "text/plain"),
}


@pytest.mark.parametrize("name", sorted(CAUSE_CELLS))
def test_nbval_fails_when_the_most_likely_cause_changes(name: str, store: Store, tmp_path: Path) -> None:
    marker, mime = CAUSE_CELLS[name]
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)
    outputs = [o for o in cell.outputs if mime in o.get("data", {})]
    # Markdown shows the family escaped (cpu\_saturation): either form is the cause.
    assert outputs and any("cpu_saturation" in plain(o["data"][mime]) for o in outputs), cell.outputs
    # The stored outputs as committed pass: that is the suite's own nbval run of notebooks/.
    for o in outputs:
        text = o["data"][mime].replace("cpu\\_saturation", "memory\\_pressure")
        o["data"][mime] = text.replace("cpu_saturation", "memory_pressure")
    copy = tmp_path / "bad" / name
    copy.parent.mkdir()
    nbformat.write(nb, copy)
    bad = nbval(copy, store)
    assert bad.returncode == 1, bad.stdout[-3000:]
    said = plain(bad.stdout)
    assert "memory_pressure" in said and "cpu_saturation" in said, bad.stdout[-3000:]
    assert "1 failed" in bad.stdout, bad.stdout[-500:]
