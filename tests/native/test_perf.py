"""PerfCounters: the kernel path as root, the honest refusal without privileges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import probe_core
import pytest


@pytest.mark.root
def test_counters_available_as_root_and_counting() -> None:
    pc = probe_core.PerfCounters()
    assert pc.available(), pc.reason()
    assert pc.reason() == ""
    assert pc.cpus() == list(range(os.cpu_count() or 1))
    before = pc.read()
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        time.sleep(0.001)  # each sleep is a context switch
    after = pc.read()
    assert len(after["per_cpu"]) == len(pc.cpus())
    assert after["total"]["context_switches"] - before["total"]["context_switches"] >= 50
    assert after["total"]["task_clock_ns"] > before["total"]["task_clock_ns"]
    assert after["total"]["page_faults"] >= before["total"]["page_faults"]
    for c in after["per_cpu"]:
        assert c["time_running_ns"] <= c["time_enabled_ns"]
    assert sum(c["context_switches"] for c in after["per_cpu"]) == after["total"]["context_switches"]


_PROBE_SCRIPT = """
import json, probe_core
pc = probe_core.PerfCounters()
out = {"available": pc.available(), "reason": pc.reason()}
try:
    pc.read()
except probe_core.UnavailableError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.root
def test_counters_unavailable_without_capabilities_say_why() -> None:
    capsh = shutil.which("capsh")
    assert capsh, "capsh (libcap2-bin) is installed by make test"
    with open("/proc/sys/kernel/perf_event_paranoid") as f:
        paranoid = int(f.read())
    if paranoid <= 0:
        pytest.fail(
            "perf_event_paranoid <= 0 lets anyone count system-wide: this test cannot prove the refusal"
        )
    env = dict(os.environ)
    out = subprocess.run(
        [
            capsh,
            "--drop=cap_sys_admin,cap_perfmon",
            "--",
            "-c",
            f"exec {sys.executable} -c '{_PROBE_SCRIPT}'",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    result = json.loads(out.stdout)
    assert result["available"] is False
    assert "Permission denied" in result["reason"] or "Operation not permitted" in result["reason"]
    assert f"kernel.perf_event_paranoid={paranoid}" in result["reason"]
    assert "CAP_PERFMON" in result["reason"]
    assert "perf counters unavailable" in result["error"]


def test_counters_on_a_root_without_proc_or_sys_raise_read_error(tmp_path: os.PathLike[str]) -> None:
    # A root without sysfs and without /proc/stat: the constructor reports the read error.
    with pytest.raises(probe_core.ReadError):
        probe_core.PerfCounters(str(tmp_path))
