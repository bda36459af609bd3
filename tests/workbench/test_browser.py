"""The workbench in a real browser: JupyterLab (a token, temporary settings) in headless
Debian Chromium driven by playwright, against a controller allowed to change the host.
The screenshots are kept (build/test-artifacts/); docs/images/ holds the README's copies."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.peers import free_port
from tests.controller.conftest import OPERATOR_TOKEN, ControllerProc
from tests.workbench.conftest import acting

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
Store = tuple[Path, dict[str, str]]


@pytest.mark.root  # CI installs Chromium (scripts/ensure-system.sh): there it must run
@pytest.mark.slow
def test_the_stepper_in_jupyterlab(store: Store, tmp_path: Path, plan_cgroup: Path) -> None:
    """Every control an operator uses, clicked in a real browser: Next through each stage's
    card, the JSON toggle, ticking one of three steps and Approve, Follow until the run
    completes, Roll back with a reason; then the run's postmortem page. The controller
    records each decision and the cgroup's quota is back as it was."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (scripts/ensure-system.sh build installs it)")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from pipelines.report import render

    data, ids = store
    before = plan_cgroup.read_text()
    ctl = ControllerProc(tmp_path, acting(data), "lab-ctl").start()
    token_file = tmp_path / "operator.token"
    token_file.write_text(OPERATOR_TOKEN)
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / "investigate.ipynb", root / "investigate.ipynb")
    lab_token, port = secrets.token_hex(16), free_port()
    env = os.environ | {
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "INCIDENTLAB_SOURCE": ctl.url,
        "INCIDENTLAB_TOKEN_FILE": str(token_file),
        "INCIDENTLAB_RUN_ID": ids["choose"],
    }
    # No news or update pop-up over what the screenshots show (nor a request to the internet).
    settings = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        '{"fetchNews": "false", "checkForUpdates": false}'
    )
    log = open(tmp_path / "lab.log", "wb")  # noqa: SIM115
    lab = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--allow-root",
            "--no-browser",
            f"--ServerApp.port={port}",
            f"--IdentityProvider.token={lab_token}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.ip=127.0.0.1",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/status?token={lab_token}", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "lab.log").read_text()[-3000:]
            time.sleep(0.5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            try:
                page.goto(f"{url}/lab/tree/investigate.ipynb?token={lab_token}")
                page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
                page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                    timeout=60_000
                )
                # Run All Cells, again if a click came before the notebook had focus (a loaded
                # machine): the stepper's Approve button showing is what says it ran.
                approve = page.get_by_role("button", name="Approve").first
                for attempt in range(3):
                    page.locator(".jp-Cell").first.click()
                    page.get_by_role("menuitem", name="Run", exact=True).click()
                    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                    try:
                        approve.wait_for(timeout=60_000)
                        break
                    except PlaywrightTimeout:
                        page.keyboard.press("Escape")
                        if attempt == 2:
                            raise
                approve.scroll_into_view_if_needed()
                # Each stage's card, by Next: five stages so far (parked before the executor).
                nxt = page.get_by_role("button", name="Next").first
                for n, kind in enumerate(
                    ["anomaly_finding", "root_cause_hypothesis", "remediation_proposal", "execution_plan"], 2
                ):
                    nxt.click()
                    page.get_by_text(f"{n}/8 {kind}").first.wait_for(timeout=15_000)
                assert nxt.is_disabled()
                page.get_by_role("button", name="JSON").first.click()
                page.get_by_text('"needs_approval"').first.wait_for(timeout=15_000)
                page.get_by_role("button", name="JSON").first.click()
                # Of the three steps that need approval, only the CPU quota.
                for step in ("1: renice", "2: renice"):
                    page.get_by_role("checkbox", name=re.compile(f"^{step}")).first.uncheck()
                stepper = page.locator(".incidentlab-stepper").first
                stepper.screenshot(path=str(ARTIFACTS / "stepper-choose.png"))
                approve.click()
                page.get_by_text("approved by ops: step(s) 3").first.wait_for(timeout=30_000)
                page.get_by_role("button", name="Follow").first.click()
                page.get_by_text("8/8 incident_report").first.wait_for(timeout=60_000)
                page.get_by_text("cpu_saturation, completed").first.wait_for(timeout=30_000)
                stepper.screenshot(path=str(ARTIFACTS / "stepper.png"))
                page.get_by_placeholder("reason (required to reject or roll back)").first.fill(
                    "the quota starves the service"
                )
                page.get_by_role("button", name="Roll back").first.click()
                page.get_by_text("rollback: step 3 rolled_back").first.wait_for(timeout=30_000)
                stepper.screenshot(path=str(ARTIFACTS / "stepper-rollback.png"))
                # The run's postmortem as a reader gets it: its approval and its rollback in it.
                report = render(ids["choose"], ctl.url, tmp_path / "reports", token_file=str(token_file))
                html = report.html.read_text()
                assert "approval by ops (steps 3)" in html and "rollback of step 3 by ops" in html
                page.goto(report.html.as_uri())
                page.get_by_text("Lessons learned").first.wait_for(timeout=15_000)
                page.screenshot(path=str(ARTIFACTS / "postmortem.png"), full_page=False)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "stepper-failure.png"), full_page=True)
                raise
            finally:
                browser.close()
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        audit = httpx.get(
            f"{ctl.url}/api/v1/agent/workflow/audit", params={"run_id": ids["choose"]}, headers=headers
        ).json()["entries"]
        decided = [(e["kind"], e["actor"], (e["detail"] or {}).get("steps")) for e in audit]
        assert ("approval", "ops", [3]) in decided
        assert [e["step"] for e in audit if e["kind"] == "rollback" and e["actor"] == "ops"] == [3]
        assert plan_cgroup.read_text() == before  # rolled back for real
        for shot in ("stepper-choose.png", "stepper.png", "stepper-rollback.png", "postmortem.png"):
            assert (ARTIFACTS / shot).stat().st_size > 10_000, shot
    finally:
        lab.terminate()
        try:
            lab.wait(15)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()
        ctl.stop()
