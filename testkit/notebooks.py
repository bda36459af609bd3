"""The notebooks' stored outputs, which nbval compares (notebooks/sanitize.cfg says what
may differ): each notebook run top to bottom on the fixture store (testkit/store.py) and
saved with its outputs, less the figures' pixels (nbval does not compare them; the
notebooks stay small in git) and the widgets' state.

    python -m testkit.notebooks            # refresh every notebook under notebooks/
    python -m testkit.notebooks --check    # exit 1 if a refresh would change one
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
DROPPED = ("image/png", "image/jpeg", "application/vnd.jupyter.widget-view+json")


def lighten(nb: Any) -> Any:
    """What is stored: outputs less pixels and widget views, no run metadata."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data:
                for key in DROPPED:
                    data.pop(key, None)
            out.get("metadata", {}).clear()
    return nb


def sanitize(text: str) -> str:
    """The text as nbval compares it: notebooks/sanitize.cfg's patterns applied."""
    import re

    from nbval.plugin import get_sanitize_patterns

    for regex, replace in get_sanitize_patterns((NOTEBOOKS / "sanitize.cfg").read_text()):
        text = re.sub(regex, replace, text)
    return text


def execute(path: Path, env: dict[str, str], timeout_s: int = 600) -> Any:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ.update(env)  # the kernel inherits it, as it does under nbval's conftest
    try:
        NotebookClient(
            nb, timeout=timeout_s, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return lighten(nb)


def main(argv: list[str] | None = None) -> int:
    import nbformat

    from testkit.store import build

    ap = argparse.ArgumentParser(prog="python -m testkit.notebooks", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook is stale")
    ap.add_argument("notebooks", nargs="*", type=Path, default=sorted(NOTEBOOKS.glob("*.ipynb")))
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="incidentlab-nb-"))
    try:
        ids = build(root / "data")
        env = {"INCIDENTLAB_SOURCE": str(root / "data"), "INCIDENTLAB_RUN_ID": ids["completed"]}
        stale = []
        for path in args.notebooks:
            fresh = nbformat.writes(execute(path, env)) + "\n"
            if sanitize(path.read_text()) != sanitize(fresh):
                stale.append(path.name)
                if not args.check:
                    path.write_text(fresh)
        verb = "stale" if args.check else "refreshed"
        print(f"{verb}: {', '.join(stale)}" if stale else "every notebook's outputs are current")
        return 1 if stale and args.check else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
