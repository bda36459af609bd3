"""Postmortems made when runs end (controller/workflow/postmortems.py): asked for without
blocking, made once, off the engine's path, failures recorded; resumed after a restart;
linked from the run's API entry and the workbench; the real renderer end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.config import PostmortemSettings
from controller.errors import ConfigError
from controller.runtime import Runtime
from controller.workflow.postmortems import Postmortems
from testkit.fleet import Fleet, Playback, recorded
from testkit.scenarios import T0
from workbench import Workbench

from .test_workflow_api import OPS, incident


class FakeRenderer:
    """Writes the report where incidentlab-report would, or fails as told."""

    def __init__(self, fail: int = 0, prints: bool = True) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail
        self.prints = prints

    def __call__(self, argv: list[str], timeout_s: float) -> tuple[int, str]:
        self.calls.append(argv)
        if self.fail:
            self.fail -= 1
            return 1, "Traceback ...\nPipelineError: the kernel died"
        run_id, out = argv[argv.index("--source") - 1], Path(argv[argv.index("--out") + 1])
        (out / run_id).mkdir(parents=True, exist_ok=True)
        (out / run_id / "postmortem.html").write_text(f"<html><h1>Postmortem of {run_id}</h1></html>")
        if "--pdf" in argv and self.prints:
            (out / run_id / "postmortem.pdf").write_bytes(b"%PDF-1.4\n% a postmortem\n%%EOF\n")
        elif "--pdf" in argv:
            return 0, "incidentlab-report: no PDF: printing postmortem.html to PDF: chromium exited 3"
        return 0, ""


def one_run(tmp: Path) -> tuple[Fleet, str]:
    """A recorded CPU saturation that stops halfway: a run that opens, completes and resolves."""
    fleet = Fleet(tmp)
    play = Playback({"node-a": recorded("cpu_stops_halfway", T0)}, {"node-a": {}})
    for step in range(125):
        fleet.t = T0 + step
        play.feed(fleet)
    (run,) = fleet.runs()
    return fleet, str(run["run_id"])


def test_a_postmortem_is_made_once_and_recorded(tmp_path: Path) -> None:
    fleet, run_id = one_run(tmp_path)
    render = FakeRenderer()
    pm = Postmortems(
        fleet.eng.runs, PostmortemSettings(when="both"), data_dir=tmp_path, clock=lambda: 5.0, render=render
    )
    row = pm.make(run_id, "completed")
    assert row is not None and row["status"] == "written" and row["reason"] == "completed"
    assert row["path"] == str(tmp_path.resolve() / "postmortems" / run_id / "postmortem.html")
    assert render.calls[0][:3] == [render.calls[0][0], "-m", "pipelines.cli"]
    assert render.calls[0][3:] == [run_id, "--source", str(tmp_path.resolve()), "--out", str(pm.dir)]
    again = pm.make(run_id, "resolved")  # resolved after it completed: made once
    assert again is not None and again["status"] == "written" and len(render.calls) == 1
    audit = fleet.eng.runs.audit_entries(run_id=run_id, kind="postmortem_written")
    assert [a["detail"]["path"] for a in audit] == [row["path"]]
    fleet.db.dispose()


def test_a_failing_renderer_is_retried_then_recorded_and_nothing_waits(tmp_path: Path) -> None:
    fleet, run_id = one_run(tmp_path)
    render = FakeRenderer(fail=5)
    pm = Postmortems(
        fleet.eng.runs,
        PostmortemSettings(max_attempts=2),
        data_dir=tmp_path,
        clock=lambda: 5.0,
        render=render,
    )
    row = pm.make(run_id, "resolved")
    assert row is not None and row["status"] == "failed" and "kernel died" in (row["error"] or "")
    assert len(render.calls) == 2 and pm.stats()["failed"] == 1
    (entry,) = fleet.eng.runs.audit_entries(run_id=run_id, kind="postmortem_failed")
    assert "kernel died" in entry["detail"]["error"]
    # A renderer that cannot start at all says so.
    pm2 = Postmortems(
        fleet.eng.runs,
        PostmortemSettings(command=["/nonexistent/renderer"]),
        data_dir=tmp_path / "other",
        clock=lambda: 6.0,
    )
    with fleet.eng.runs.begin() as tx:
        tx.request_postmortem("run-x", why="resolved", at=1.0)
    row2 = pm2.make("run-x", "resumed")
    assert row2 is not None and row2["status"] == "failed" and "could not start" in (row2["error"] or "")
    fleet.db.dispose()


def test_asks_are_bounded_and_filtered_by_when(tmp_path: Path) -> None:
    fleet, _ = one_run(tmp_path)
    pm = Postmortems(fleet.eng.runs, PostmortemSettings(queue_max=2), data_dir=tmp_path, clock=time.time)
    pm.ask("a", "completed")  # when: resolved (the default) takes resolutions only
    assert pm.stats()["queued"] == 0
    for r in ("a", "b", "c"):
        pm.ask(r, "resolved")
    assert pm.stats()["queued"] == 2 and pm.stats()["dropped"] == 1
    off = Postmortems(fleet.eng.runs, PostmortemSettings(enabled=False), data_dir=tmp_path, clock=time.time)
    off.ask("a", "resolved")
    assert off.stats()["queued"] == 0
    fleet.db.dispose()


def test_the_engine_asks_when_a_run_resolves_and_the_worker_makes_it(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    render = FakeRenderer()
    pm = Postmortems(
        fleet.eng.runs, PostmortemSettings(), data_dir=tmp_path, clock=lambda: fleet.t, render=render
    )
    fleet.eng.triggers.on_ended = pm.ask
    fleet.eng.runner.on_ended = pm.ask
    pm.start()
    try:
        play = Playback({"node-a": recorded("cpu_stops_halfway", T0)}, {"node-a": {}})
        for step in range(125):
            fleet.t = T0 + step
            play.feed(fleet)
        (run,) = fleet.runs()
        assert run["state"] == "resolved"
        deadline = time.monotonic() + 10
        row: Any = None
        while time.monotonic() < deadline:
            with fleet.eng.runs.read() as tx:
                row = tx.postmortem(run["run_id"])
            if row is not None and row["status"] == "written":
                break
            time.sleep(0.05)
        assert row is not None and row["status"] == "written" and row["reason"] == "resolved"
        assert len(render.calls) == 1  # completed earlier: not asked for (when: resolved)
    finally:
        pm.stop()
        fleet.db.dispose()


def test_a_restart_picks_up_what_was_left(tmp_path: Path) -> None:
    fleet, run_id = one_run(tmp_path)
    with fleet.eng.runs.begin() as tx:
        tx.request_postmortem(run_id, why="resolved", at=1.0)
        tx.start_postmortem(run_id, at=2.0)  # the controller died while rendering
    render = FakeRenderer()
    pm = Postmortems(fleet.eng.runs, PostmortemSettings(), data_dir=tmp_path, clock=time.time, render=render)
    pm.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not render.calls:
            time.sleep(0.05)
        time.sleep(0.2)
        with fleet.eng.runs.read() as tx:
            row = tx.postmortem(run_id)
        assert row is not None and row["status"] == "written" and row["attempts"] == 2
    finally:
        pm.stop()
        fleet.db.dispose()


def test_the_api_and_the_workbench_link_it(api: tuple[httpx.Client, Runtime]) -> None:
    client, rt = api
    run_id = incident(rt, "cpu_saturation", "node-p")
    assert client.get(f"/api/v1/agent/workflow/runs/{run_id}/postmortem", headers=OPS).status_code == 404
    assert client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS).json()["postmortem"] is None
    rt.postmortems.render = FakeRenderer()
    rt.postmortems.make(run_id, "resolved")
    detail = client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS).json()["postmortem"]
    assert (
        detail["status"] == "written" and detail["url"] == f"/api/v1/agent/workflow/runs/{run_id}/postmortem"
    )
    page = client.get(detail["url"], headers=OPS)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # What collectors sent is in it: served so that nothing in it runs or loads.
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "sandbox" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert f"Postmortem of {run_id}" in page.text
    assert client.get(detail["url"]).status_code == 401
    assert client.get("/api/v1/agent/workflow/runs/run-nope/postmortem", headers=OPS).status_code == 404
    with Workbench(str(client.base_url), token=OPS["Authorization"].split()[1]) as wb:
        got = wb.postmortem(run_id)
    assert (
        got is not None and got["url"] == f"{client.base_url}/api/v1/agent/workflow/runs/{run_id}/postmortem"
    )
    # A row pointing outside the postmortems directory is never served.
    with rt.workflow.runs.begin() as tx:
        tx.finish_postmortem(run_id, ok=True, at=1.0, path="/etc/passwd", error=None)
    assert client.get(detail["url"], headers=OPS).status_code == 404


def test_the_real_renderer_writes_a_postmortem(tmp_path: Path) -> None:
    fleet, run_id = one_run(tmp_path)
    fleet.db.dispose()
    pm = Postmortems(Fleet(tmp_path).eng.runs, PostmortemSettings(), data_dir=tmp_path, clock=time.time)
    row = pm.make(run_id, "resolved")
    assert row is not None and row["status"] == "written", row
    html = Path(row["path"] or "").read_text()
    assert "Chain intact: 8 artifacts" in html and "cpu_saturation" in html
    # Made when the fault ended: how long it took to detect and to resolve.
    assert "after it began" in html and "The fault lasted" in html
    assert "not resolved when written" not in html and "<strong>Status:</strong> resolved" in html


def test_pdfs_are_asked_for_and_served(api: tuple[httpx.Client, Runtime], tmp_path: Path) -> None:
    client, rt = api
    run_id = incident(rt, "cpu_saturation", "node-q")
    rt.postmortems.render = FakeRenderer()
    rt.postmortems.make(run_id, "resolved")
    url = f"/api/v1/agent/workflow/runs/{run_id}/postmortem"
    detail = client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS).json()["postmortem"]
    assert "pdf_url" not in detail  # pdf is off: none printed
    missing = client.get(url, params={"format": "pdf"}, headers=OPS)
    assert missing.status_code == 404 and "no PDF" in missing.json()["detail"]
    assert client.get(url, params={"format": "exe"}, headers=OPS).status_code == 422
    # Printed beside the HTML: linked and served as a PDF.
    rt.postmortems.s = PostmortemSettings(pdf=True, browser="sh")
    run_id = incident(rt, "cpu_saturation", "node-r")
    url = f"/api/v1/agent/workflow/runs/{run_id}/postmortem"
    assert rt.postmortems.command(run_id)[-3:] == ["--pdf", "--browser", "sh"]
    rt.postmortems.make(run_id, "resolved")
    detail = client.get(f"/api/v1/agent/workflow/runs/{run_id}", headers=OPS).json()["postmortem"]
    assert detail["pdf_url"] == url + "?format=pdf"
    pdf = client.get(detail["pdf_url"], headers=OPS)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF-") and run_id in pdf.headers["content-disposition"]
    assert client.get(detail["pdf_url"]).status_code == 401


def test_a_pdf_that_was_not_printed_leaves_the_html_and_says_why(tmp_path: Path) -> None:
    fleet, run_id = one_run(tmp_path)
    render = FakeRenderer(prints=False)
    settings = PostmortemSettings(pdf=True, browser="sh")
    pm = Postmortems(fleet.eng.runs, settings, data_dir=tmp_path, clock=lambda: 5.0, render=render)
    row = pm.make(run_id, "resolved")
    assert row is not None and row["status"] == "written"  # the HTML stands
    (entry,) = fleet.eng.runs.audit_entries(run_id=run_id, kind="postmortem_written")
    assert "chromium exited 3" in entry["detail"]["pdf_error"]
    fleet.db.dispose()


def test_pdf_on_without_a_browser_stops_the_start(tmp_path: Path) -> None:
    fleet, _ = one_run(tmp_path)
    settings = PostmortemSettings(pdf=True, browser="/nowhere/chromium")
    with pytest.raises(ConfigError, match=r"pdf is on but no browser .*\(/nowhere/chromium\)"):
        Postmortems(fleet.eng.runs, settings, data_dir=tmp_path, clock=time.time)
    off = PostmortemSettings(pdf=True, browser="/nowhere/chromium", enabled=False)
    Postmortems(fleet.eng.runs, off, data_dir=tmp_path, clock=time.time)  # off: nothing to print
    fleet.db.dispose()


def test_stopping_ends_a_render_that_is_running_and_a_slow_one_times_out() -> None:
    import threading

    from controller.workflow.postmortems import Command

    cmd = Command()
    got: list[tuple[int, str]] = []
    t = threading.Thread(target=lambda: got.append(cmd(["sleep", "30"], 60)))
    started = time.monotonic()
    t.start()
    time.sleep(0.3)
    cmd.stop()
    t.join(10)
    assert got and got[0][0] != 0 and time.monotonic() - started < 10
    assert cmd(["true"], 5)[0] == 125  # stopped: nothing more starts
    assert Command()(["sleep", "5"], 0.2) == (124, "timed out after 0.2 s")
    assert Command()(["sh", "-c", "echo boom; exit 3"], 5) == (3, "boom\n")
