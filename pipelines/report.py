"""Postmortem reports: postmortem.ipynb run through papermill with a run's parameters,
then the executed notebook and an HTML report (nbconvert, input cells hidden unless
asked). Files are written atomically, so a rerun replaces a report whole or not at all.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import PipelineError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
POSTMORTEM = NOTEBOOKS / "postmortem.ipynb"


@dataclass(frozen=True)
class Report:
    run_id: str
    notebook: Path
    html: Path


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _absolute(source: str) -> str:
    """The notebook runs in notebooks/: a relative data directory must not change meaning."""
    return source if source.startswith(("http://", "https://")) else str(Path(source).resolve())


def _cell(executed: Path, index: int) -> str:
    """The failing cell as the notebook's author knows it: its index in the notebook as
    written (papermill's injected parameters cell not counted) and its first line."""
    import nbformat

    try:
        # Without the error banner papermill puts on top of a notebook that failed.
        cells = [
            c
            for c in nbformat.read(executed, as_version=4).cells
            if "papermill-error-cell-tag" not in c.metadata.get("tags", [])
        ]
    except Exception:
        return f"cell {index}"
    injected = sum(1 for c in cells[:index] if "injected-parameters" in c.metadata.get("tags", []))
    lines = cells[index].source.splitlines() if index < len(cells) else []
    first = next((line for line in lines if line.strip()), "")
    return f"cell {index - injected} ({first[:80]!r})"


def render(
    run_id: str,
    source: str,
    out_dir: Path,
    *,
    token_file: str = "",
    notebook: Path = POSTMORTEM,
    show_input: bool = False,
    timeout_s: int = 600,
    kernel: str = "python3",
) -> Report:
    """Execute the postmortem notebook for run_id and write <out>/<run_id>/postmortem.{ipynb,html}."""
    import nbformat
    import papermill
    from nbconvert import HTMLExporter
    from papermill.exceptions import PapermillExecutionError

    target = out_dir / run_id
    target.mkdir(parents=True, exist_ok=True)
    executed = target / "postmortem.ipynb"
    with tempfile.TemporaryDirectory(dir=target) as work:
        scratch = Path(work) / "postmortem.ipynb"
        try:
            papermill.execute_notebook(
                str(notebook),
                str(scratch),
                # A token file's path, never the token: the executed notebook is kept.
                parameters={"source": _absolute(source), "run_id": run_id, "token_file": token_file},
                kernel_name=kernel,
                progress_bar=False,
                execution_timeout=timeout_s,
                cwd=str(notebook.parent),
            )
        except PapermillExecutionError as exc:
            raise PipelineError(
                f"postmortem of {run_id}: {_cell(scratch, exc.cell_index)} raised {exc.ename}: {exc.evalue}"
            ) from None
        except Exception as exc:  # no kernel, unreadable notebook: one clear error
            raise PipelineError(f"postmortem of {run_id}: {type(exc).__name__}: {exc}") from exc
        nb = nbformat.read(scratch, as_version=4)
        html, _ = HTMLExporter(exclude_input=not show_input, exclude_input_prompt=True).from_notebook_node(nb)
        _atomic_write(executed, scratch.read_bytes())
    html_path = target / "postmortem.html"
    _atomic_write(html_path, html.encode())
    return Report(run_id, executed, html_path)
