"""Postmortem reports: postmortem.ipynb run through papermill with a run's parameters,
then the executed notebook and an HTML report (nbconvert, input cells hidden unless
asked). Files are written atomically, so a rerun replaces a report whole or not at all.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.workflow.postmortems import BROWSERS, which_browser
from pipelines.errors import PipelineError

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
POSTMORTEM = NOTEBOOKS / "postmortem.ipynb"


@dataclass(frozen=True)
class Report:
    run_id: str
    notebook: Path
    html: Path
    pdf: Path | None = None
    pdf_error: str | None = None  # asked for and not printed: the HTML stands, this says why


PDF_TIMEOUT_S = 120


def find_browser(name: str | None = None) -> str:
    """The headless browser that prints the PDF: ``name`` (a path or a command), else the
    first of BROWSERS on PATH."""
    found = which_browser(name)
    if found is not None:
        return found
    raise PipelineError(
        f"no browser to print the PDF with ({name or ' or '.join(BROWSERS)} not found): "
        "install Debian's chromium, or leave the PDF out"
    )


def print_pdf(html: Path, pdf: Path, *, browser: str | None = None, timeout_s: float = PDF_TIMEOUT_S) -> Path:
    """The HTML report printed to PDF by headless Chromium (what nbconvert's webpdf does
    through playwright, without the browser download a machine off the internet cannot do).
    Written atomically; a browser that fails or hangs is a PipelineError with its last words."""
    import subprocess

    exe = find_browser(browser)
    with tempfile.TemporaryDirectory(dir=pdf.parent) as work:
        out = Path(work) / "postmortem.pdf"
        argv = [
            exe,
            "--headless",
            "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--user-data-dir={Path(work) / 'profile'}",
            f"--print-to-pdf={out}",
            html.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"printing {html.name} to PDF: {exe} took over {timeout_s:g} s") from None
        if done.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PipelineError(
                f"printing {html.name} to PDF: {exe} exited {done.returncode}: {' | '.join(tail)[:500]}"
            )
        _atomic_write(pdf, out.read_bytes())
    return pdf


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


def _html(nb: Any, show_input: bool) -> str:
    """The report a reader gets: no prompts, no code unless asked, no authoring cells
    (tagged remove-cell), a title from the notebook's first heading."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = ("remove-cell",) if not show_input else ()
    config.TagRemovePreprocessor.enabled = True
    exporter = HTMLExporter(
        config=config, exclude_input=not show_input, exclude_input_prompt=True, exclude_output_prompt=True
    )
    exporter.register_preprocessor(TagRemovePreprocessor(config=config), enabled=True)
    title = next(
        (
            o["data"]["text/markdown"].lstrip("# ").strip()
            for c in nb.cells
            for o in c.get("outputs", [])
            if str(o.get("data", {}).get("text/markdown", "")).startswith("# ")
        ),
        "Postmortem",
    )
    nb.metadata["title"] = title
    html, _ = exporter.from_notebook_node(nb)
    # The template's scripts (require.js, MathJax, mermaid from a CDN) are not needed by a
    # report of static outputs: without them it loads nothing from the internet, prints
    # offline, and nothing in it runs.
    return _SCRIPT.sub("", str(html))


_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.S | re.I)


def render(
    run_id: str,
    source: str,
    out_dir: Path,
    *,
    token_file: str = "",
    ca_file: str = "",
    notebook: Path = POSTMORTEM,
    show_input: bool = False,
    timeout_s: int = 600,
    kernel: str = "python3",
    pdf: bool = False,
    browser: str | None = None,
) -> Report:
    """Execute the postmortem notebook for run_id and write <out>/<run_id>/postmortem.{ipynb,html}
    (and .pdf, printed from the HTML, with ``pdf``; a print that fails leaves the HTML and
    says why in ``pdf_error``)."""
    import nbformat
    import papermill
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
                parameters={
                    "source": _absolute(source),
                    "run_id": run_id,
                    "token_file": token_file,
                    "ca_file": ca_file,
                },
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
        html = _html(nb, show_input)
        _atomic_write(executed, scratch.read_bytes())
    html_path = target / "postmortem.html"
    _atomic_write(html_path, html.encode())
    pdf_path = target / "postmortem.pdf"
    if not pdf:
        pdf_path.unlink(missing_ok=True)  # an older print would no longer match the HTML
        return Report(run_id, executed, html_path)
    try:
        return Report(run_id, executed, html_path, print_pdf(html_path, pdf_path, browser=browser))
    except PipelineError as exc:
        pdf_path.unlink(missing_ok=True)
        return Report(run_id, executed, html_path, None, str(exc))
