"""The workbench in a real browser: JupyterLab (a token, temporary settings) in headless
Debian Chromium driven by playwright. It opens investigate.ipynb against a controller
holding a run that awaits approval, runs it, clicks Approve in the stepper, and the
controller records the approval. The screenshot is kept (build/test-artifacts/)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.peers import free_port
from tests.controller.conftest import OPERATOR_TOKEN, ControllerProc, base_config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
Store = tuple[Path, dict[str, str]]


@pytest.mark.root  # CI installs Chromium (scripts/ensure-system.sh): there it must run
@pytest.mark.slow
def test_approve_from_the_stepper_in_jupyterlab(store: Store, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (scripts/ensure-system.sh build installs it)")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    data, ids = store
    ctl = ControllerProc(tmp_path, base_config(data), "lab-ctl").start()
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
        "INCIDENTLAB_RUN_ID": ids["awaiting"],
    }
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
                # Run All Cells, again if the first click came before the notebook had focus
                # (a loaded machine): the first cell's prompt shows it took.
                page.locator(".jp-Cell").first.click()
                for _ in range(3):
                    page.get_by_role("menuitem", name="Run", exact=True).click()
                    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
                    try:
                        page.locator(".jp-InputPrompt", has_text="[1]").first.wait_for(timeout=20_000)
                        break
                    except PlaywrightTimeout:
                        page.keyboard.press("Escape")
                approve = page.get_by_role("button", name="Approve").first
                approve.wait_for(timeout=90_000)
                approve.scroll_into_view_if_needed()
                assert approve.is_enabled()
                page.screenshot(path=str(ARTIFACTS / "stepper-before-approve.png"), full_page=False)
                approve.click()
                page.get_by_text("approved by ops").first.wait_for(timeout=30_000)
                page.screenshot(path=str(ARTIFACTS / "stepper.png"), full_page=False)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "stepper-failure.png"), full_page=True)
                raise
            finally:
                browser.close()
        audit = httpx.get(
            f"{ctl.url}/api/v1/agent/workflow/audit",
            params={"run_id": ids["awaiting"], "kind": "approval"},
            headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"},
        ).json()["entries"]
        assert [e["actor"] for e in audit] == ["ops"]
        assert (ARTIFACTS / "stepper.png").stat().st_size > 10_000
    finally:
        lab.terminate()
        try:
            lab.wait(15)
        except subprocess.TimeoutExpired:
            lab.kill()
        log.close()
        ctl.stop()
