"""incidentlab-report end to end: papermill runs postmortem.ipynb for a run of the recorded
store, nbconvert writes the HTML with the code hidden; a failing notebook becomes an error
naming the cell; reruns replace the reports whole."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from pipelines.cli import main
from pipelines.errors import PipelineError
from pipelines.report import POSTMORTEM, render

Store = tuple[Path, dict[str, str]]
TEMPLATE = (
    "Summary",
    "Impact",
    "Root cause and trigger",
    "Detection",
    "Resolution",
    "Action items",
    "Lessons learned",
    "Timeline",
    "Supporting information",
)
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.root  # CI installs Chromium (scripts/ensure-system.sh): there it must run
def test_a_postmortem_printed_to_pdf(store: Store, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (scripts/ensure-system.sh build installs it)")
    data, ids = store
    report = render(ids["completed"], str(data), tmp_path / "reports", pdf=True)
    assert report.pdf == report.html.with_suffix(".pdf")
    body = report.pdf.read_bytes()
    assert body.startswith(b"%PDF-") and body.rstrip().endswith(b"%%EOF")
    assert b"/Type /Pages" in body and len(body) > 20_000  # a page tree, and the figures in it
    again = render(ids["completed"], str(data), tmp_path / "reports")  # pdf off: none left behind
    assert again.pdf is None and not report.html.with_suffix(".pdf").exists()


def test_no_browser_keeps_the_html_and_says_why_there_is_no_pdf(store: Store, tmp_path: Path) -> None:
    data, ids = store
    stale = tmp_path / "reports" / ids["completed"] / "postmortem.pdf"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"%PDF- an older print")
    report = render(ids["completed"], str(data), tmp_path / "reports", pdf=True, browser="/nowhere/chromium")
    assert report.pdf is None and report.html.is_file()
    assert report.pdf_error is not None
    assert "no browser to print the PDF with (/nowhere/chromium not found)" in report.pdf_error
    assert not stale.exists()  # an older print no longer matches the HTML


def test_a_browser_that_fails_or_hangs_is_a_clear_reason(tmp_path: Path) -> None:
    from pipelines.report import print_pdf

    html = tmp_path / "postmortem.html"
    html.write_text("<html><body>a postmortem</body></html>")
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'GPU process exited unexpectedly' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(PipelineError, match=r"exited 3: GPU process exited unexpectedly"):
        print_pdf(html, tmp_path / "postmortem.pdf", browser=str(fake))
    slow = tmp_path / "slow-chromium"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(PipelineError, match=r"took over 0.5 s"):
        print_pdf(html, tmp_path / "postmortem.pdf", browser=str(slow), timeout_s=0.5)
    assert not (tmp_path / "postmortem.pdf").exists()


def test_a_postmortem_report_for_a_run(store: Store, tmp_path: Path) -> None:
    data, ids = store
    out = tmp_path / "reports"
    report = render(ids["completed"], str(data), out)
    html = report.html.read_text()
    assert report.html == out / ids["completed"] / "postmortem.html" and report.notebook.is_file()
    assert "Chain intact: 8 artifacts" in html and "cpu_saturation" in html
    assert "Verdict <strong>skipped</strong>" in html
    # The Google SRE book's sections, in its order (docs/postmortem.md).
    at = [html.index(f">{s}") for s in TEMPLATE]
    assert at == sorted(at), dict(zip(TEMPLATE, at, strict=True))
    assert "<title>Postmortem: cpu saturation on recorded-cpu</title>" in html
    assert "Postmortem notebook" not in html and "token_file" not in html  # authoring cells removed
    assert 'data-kind="execution_plan"' in html  # the chain diagram
    assert 'class="jp-CodeMirrorEditor' not in html  # no code
    assert "<script" not in html and "cdnjs" not in html  # nothing runs, nothing loads
    assert not re.search(r"(In|Out)\[\d*\]:", html)  # no prompts
    nb = nbformat.read(report.notebook, as_version=4)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the evidence plot did not render"
    assert "<img" in html
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert ids["completed"] in injected.source and str(data) in injected.source
    first = report.html.stat().st_mtime_ns
    again = render(ids["completed"], str(data), out, show_input=True)
    assert again.html == report.html and again.html.stat().st_mtime_ns >= first
    assert 'class="jp-CodeMirrorEditor' in again.html.read_text()
    assert "Postmortem notebook" in again.html.read_text()  # the whole notebook, asked for
    assert sorted(p.name for p in (out / ids["completed"]).iterdir()) == [
        "postmortem.html",
        "postmortem.ipynb",
    ]


def test_what_collectors_sent_shows_as_text_in_the_report() -> None:
    """A cgroup path or process name can hold markup: the postmortem's sentences go through
    pm.md, so the report shows it literally and runs nothing."""
    from IPython.display import Markdown

    from pipelines.report import _html
    from workbench.postmortem import md

    hostile = '/kube/<img src=x onerror="alert(1)">/[link](javascript:alert(2))/*x*'
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    shown = Markdown(f"**Root cause.** cgroup {md(hostile)}")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"text/markdown": shown.data})]
    nb.cells = [cell]
    html = _html(nb, show_input=False)
    body = html[html.index("<body") :]
    assert "<img src=x" not in body and 'href="javascript' not in body and "<em>x</em>" not in body
    assert "&lt;img src=x onerror=" in body and "<strong>Root cause.</strong>" in body


def test_a_failing_notebook_is_a_clear_error_naming_the_cell(store: Store, tmp_path: Path) -> None:
    data, _ = store
    with pytest.raises(
        PipelineError, match=r"postmortem of run-nope: cell \d+ .* raised WorkbenchError: no workflow run"
    ):
        render("run-nope", str(data), tmp_path / "reports")
    assert not (tmp_path / "reports" / "run-nope" / "postmortem.html").exists()
    broken = tmp_path / "broken.ipynb"
    nb = nbformat.read(POSTMORTEM, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('boom in the last cell')"))
    nbformat.write(nb, broken)
    with pytest.raises(
        PipelineError,
        match=rf"cell {len(nb.cells) - 1} \(\"raise RuntimeError.*\) raised RuntimeError: boom in the last",
    ):
        render(_ids(store)["completed"], str(data), tmp_path / "reports", notebook=broken)


def _ids(store: Store) -> dict[str, str]:
    return store[1]


def test_the_cli_reports_all_closed_runs_once(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, ids = store
    out = tmp_path / "reports"
    assert main(["--all-closed", "--source", str(data), "--out", str(out)]) == 0
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted([ids["completed"], ids["memory"]])  # the awaiting run is not closed
    assert main(["--all-closed", "--source", str(data), "--out", str(out)]) == 0
    assert "no completed run without a report" in capsys.readouterr().out
    assert main(["run-nope", "--source", str(data), "--out", str(out)]) == 1
    assert "incidentlab-report: postmortem of run-nope: cell" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--source", str(data)])  # neither a run nor --all-closed


@pytest.mark.parametrize("name", ["investigate.ipynb", "postmortem.ipynb"])
def test_notebooks_store_outputs_nbval_compares(name: str) -> None:
    """One parameters cell; every code cell's output is stored (python -m testkit.notebooks)
    and compared unless tagged nbval-ignore-output with its reason on the first line; no
    stored pixels (nbval does not compare them) and no widget state."""
    nb = nbformat.read(POSTMORTEM.parent / name, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    code = [c for c in nb.cells if c.cell_type == "code"]
    ignored = [c for c in code if "nbval-ignore-output" in c.metadata.get("tags", [])]
    for c in ignored:
        assert c.source.startswith("# nbval-ignore-output: "), c.source[:80]
    assert len(ignored) <= len(code) // 3, "most cells must be compared"
    assert any(c.outputs for c in code if c not in ignored)
    assert "widgets" not in nb.metadata
    for c in code:
        for out in c.outputs:
            assert "image/png" not in out.get("data", {}), c.source[:80]


def test_a_postmortem_of_a_fleet_incident(tmp_path: Path) -> None:
    """A fleet incident's postmortem: its blast radius, members and the hosts-by-time view."""
    from testkit.fleet import Fleet, play_together, recorded
    from testkit.scenarios import T0

    fleet = Fleet(tmp_path / "data", min_hosts=3)
    hosts = [f"node-{i}" for i in range(3)]
    plays = {h: recorded("cpu_workers_cgroup", T0 + i) for i, h in enumerate(hosts)}
    play_together(fleet, plays, {h: {"cluster": "prod", "zone": "a"} for h in hosts}, 92)
    (inc,) = fleet.runs(scope="fleet")
    fleet.db.dispose()
    report = render(inc["run_id"], str(tmp_path / "data"), tmp_path / "reports")
    html = report.html.read_text()
    assert "3 hosts; zones a; services cgroup:/ilab-workers" in html and "node-2" in html
    assert "Chain intact: 8 artifacts" in html and "<img" in html
