"""The eBPF loader child: it compiles with bcc, hands the collector the fds, and leaves;
the collector never imports bcc. Its failures (a compile error, a hang, a wrong answer)
come back as one line and the source falls back to files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collector.sources.ebpf import parse_bio_items, parse_runq_items
from collector.sources.ebpf_loader import LoadError, load, parse_cpu_list

ROOT = Path(__file__).resolve().parents[2]


def fake_python(tmp_path: Path, body: str) -> str:
    """A stand-in for the interpreter the loader runs: ``--sock N`` is in its argv."""
    path = tmp_path / "fake-python"
    path.write_text(
        f"#!{sys.executable}\nimport json, os, socket, sys, time\n"
        "sock = socket.socket(fileno=int(sys.argv[sys.argv.index('--sock') + 1]))\n" + textwrap.dedent(body)
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0\n", [0]), ("0-3\n", [0, 1, 2, 3]), ("0-1,4,6-7", [0, 1, 4, 6, 7]), ("", [])],
)
def test_cpu_lists(text: str, cpus: list[int]) -> None:
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text", ["a-b", "3-1", "-1", "0-99999999"])
def test_a_cpu_list_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(LoadError, match="not a CPU list"):
        parse_cpu_list(text)


def test_histogram_entries_are_decoded_and_short_ones_skipped() -> None:
    le = sys.byteorder
    runq = [((3).to_bytes(4, le), (42).to_bytes(8, le)), (b"\1", b"\0" * 8)]
    assert parse_runq_items(runq) == {3: 42}
    bio = [((259).to_bytes(4, le) + (7).to_bytes(4, le), (5).to_bytes(8, le)), (b"\0" * 4, b"\0" * 8)]
    assert parse_bio_items(bio) == {(259, 7): 5}


def test_a_compile_error_comes_back_as_its_reason(tmp_path: Path) -> None:
    py = fake_python(
        tmp_path,
        """
        sock.send(json.dumps({"ok": False, "error": "eBPF programs did not load: clang: error X"}).encode())
        sys.exit(1)
        """,
    )
    with pytest.raises(LoadError, match="clang: error X"):
        load("/", 10, python=py)


def test_a_child_that_dies_without_a_word_is_told_by_its_last_line(tmp_path: Path) -> None:
    said = "print('modprobe: FATAL: Module kheaders not found', file=sys.stderr)\nsys.exit(3)\n"
    py = fake_python(tmp_path, said)
    with pytest.raises(LoadError, match="kheaders not found"):
        load("/", 10, python=py)


def test_a_child_that_hangs_is_given_up_on_and_killed(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    py = fake_python(tmp_path, f"open({str(marker)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n")
    t0 = time.monotonic()
    with pytest.raises(LoadError, match=r"did not answer within 0\.5 s"):
        load("/", 0.5, python=py)
    assert time.monotonic() - t0 < 10
    pid = int(marker.read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped


def test_an_answer_that_does_not_add_up_is_refused_and_its_fds_closed(tmp_path: Path) -> None:
    py = fake_python(
        tmp_path,
        """
        r, w = os.pipe()
        meta = {"ok": True, "tracepoints": ["a", "b"], "programs": [], "maps": []}
        socket.send_fds(sock, [json.dumps(meta).encode()], [r])
        """,
    )
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(LoadError, match="named 2 fds and sent 1"):
        load("/", 10, python=py)
    assert len(os.listdir("/proc/self/fd")) == before
    py = fake_python(
        tmp_path,
        """
        r, w = os.pipe()
        meta = {"ok": True, "tracepoints": ["t"], "programs": [], "maps": ["events"]}
        socket.send_fds(sock, [json.dumps(meta).encode()], [r, w])
        """,
    )
    with pytest.raises(LoadError, match="sent no runq_hist, bio_hist"):
        load("/", 10, python=py)
    assert len(os.listdir("/proc/self/fd")) == before


COLLECTOR = """
import json, os, sys
from collector.config import CollectorSettings
from collector.info import detect_capabilities
from collector.sources import SourceContext
from collector.sources.ebpf import EbpfSource
settings = CollectorSettings()
src = EbpfSource(SourceContext(settings, detect_capabilities(settings)))
plan = src.plan()
def bpf_fds():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return [l for l in out if "bpf" in l or "perf_event" in l]
held = bpf_fds()
first = src.sample()
src.close()
print(json.dumps({"path": plan.path, "reason": plan.reason, "bcc": "bcc" in sys.modules,
                  "held": held, "after_close": bpf_fds(), "status": first.status,
                  "children": open(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read().split()}))
"""


@pytest.mark.root
def test_the_collector_runs_the_programs_without_bcc_and_closing_detaches_them() -> None:
    out = subprocess.run(
        [sys.executable, "-c", COLLECTOR], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
    )
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["path"] == "kernel", got["reason"]
    assert got["bcc"] is False  # LLVM stayed in the child
    assert got["children"] == []  # the loader is gone
    assert any("bpf-prog" in link for link in got["held"]) and any("bpf-map" in link for link in got["held"])
    assert any("perf_event" in link for link in got["held"])  # the tracepoints and the rings
    assert got["status"] == "ok" and got["after_close"] == []


def test_an_answer_that_is_not_even_text_is_a_load_error(tmp_path: Path) -> None:
    py = fake_python(tmp_path, "sock.send(b'\\xff\\xfe not json')\n")
    with pytest.raises(LoadError):
        load("/", 10, python=py)


def test_a_loader_that_fails_leaves_the_source_on_its_file_path() -> None:
    from collector.config import CollectorSettings
    from collector.info import Capabilities
    from collector.sources import SourceContext
    from collector.sources.ebpf import EbpfSource

    caps = Capabilities(frozenset(), 2, True, None, False, "test: no NVML")  # bcc said to be usable
    src = EbpfSource(SourceContext(CollectorSettings(ebpf_load_timeout_s=0.001), caps))
    try:
        plan = src.plan()
        assert plan.path == "file" and "did not answer within 0.001 s" in str(plan.reason)
        assert src.sample().path == "file"  # the collector runs on
    finally:
        src.close()
