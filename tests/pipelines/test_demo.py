"""make demo, shortened only by the detectors' own pace: a controller, a collector, two CPU
hogs in a cgroup of their own, one step of the plan approved and applied, the run to its
incident report, the postmortem in HTML and PDF."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.root
@pytest.mark.slow
def test_make_demo_reports_the_injected_cause(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    # Its own session: on a timeout the whole group goes, hogs included.
    demo = subprocess.Popen(
        [sys.executable, "-m", "pipelines.demo", "--data", str(data), "--timeout", "120"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = demo.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        out, err = demo.communicate()
    assert demo.returncode == 0, out[-3000:] + err[-3000:]
    # One hog per CPU in the demo's cgroup: the cgroup owns the fault, the hogs are its members.
    assert "cause      cpu_saturation: cgroup /ilab-demo (sha256sum x" in out, out[-3000:]
    (report,) = (data / "reports").glob("run-*/postmortem.html")
    html = report.read_text()
    assert "cpu_saturation" in html and "sha256sum" in html and "Chain intact" in html
    # The operator's part: one step of the plan approved, applied and verified.
    assert "approved step(s)" in out and "(cgroup_cpu_quota) as demo-operator" in out, out[-3000:]
    assert "cgroup_cpu_quota: applied" in out, out[-3000:]
    verdict = next(line for line in out.splitlines() if line.startswith("verdict"))
    assert verdict.split()[1] in ("improved", "not_improved"), verdict  # compared, not skipped
    for section in ("Summary", "Impact", "Action items", "Lessons learned", "Timeline", "Approvals"):
        assert f">{section}" in html, section
    assert "demo-operator" in html
    # Printed beside it (CI installs Debian's chromium).
    assert report.with_suffix(".pdf").read_bytes().startswith(b"%PDF-")
    assert not Path("/sys/fs/cgroup/cpu/ilab-demo").exists()  # it cleans up after itself
    # Everything it started is gone: no hog is left running.
    left = subprocess.run(["pgrep", "-f", "sha256sum /dev/zero"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
