"""Pure parsers of the collector: cgroup layouts, Kubernetes ids, Prometheus text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from collector.cgroups import (
    parse_cpu_max,
    parse_flat_keyed,
    parse_io_stat,
    parse_kube_ids,
    parse_limit,
    parse_mountinfo,
    parse_v1_limit,
)
from collector.sources.cgroup import PROCS_READ_MAX, _procs, parse_procs_count
from collector.sources.ebpf import histogram_delta, parse_schedstat_wait
from collector.sources.external import ParseError, parse_prometheus_text
from collector.sources.gpu import decode_throttle_reasons

UID = "1f2e3d4c-aaaa-bbbb-cccc-000000000001"
CID = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"/kubepods/burstable/pod{UID}/{CID}", (UID, CID, "burstable")),
        (f"/kubepods/pod{UID}/{CID}", (UID, CID, "guaranteed")),
        (f"/kubepods/besteffort/pod{UID}", (UID, None, "besteffort")),
        (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            + UID.replace("-", "_")
            + f".slice/cri-containerd-{CID}.scope",
            (UID, CID, "burstable"),
        ),
        (
            f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/docker-{CID}.scope",
            (UID, CID, "guaranteed"),
        ),
    ],
)
def test_parse_kube_ids(path: str, expected: tuple[str, str | None, str]) -> None:
    ids = parse_kube_ids(path)
    assert ids is not None
    assert (ids.pod_uid, ids.container_id, ids.qos) == expected


@pytest.mark.parametrize("path", ["/system.slice/sshd.service", "/kubepods/burstable", "/", "/docker/" + CID])
def test_parse_kube_ids_none_outside_pods(path: str) -> None:
    assert parse_kube_ids(path) is None


def test_parse_mountinfo_hybrid_and_escapes() -> None:
    text = (
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "33 31 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n"
        "34 31 0:31 / /sys/fs/cgroup/sys\\040temd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "garbage\n"
    )
    mounts = parse_mountinfo(text)
    assert [(m.version, m.path, sorted(m.controllers)) for m in mounts] == [
        (1, "/sys/fs/cgroup/cpu,cpuacct", ["cpu", "cpuacct"]),
        (2, "/sys/fs/cgroup/unified", []),
        (1, "/sys/fs/cgroup/sys temd", ["name=systemd"]),
    ]


def test_small_cgroup_file_parsers() -> None:
    assert parse_flat_keyed("usage_usec 10\nnr_periods 3\nbogus\n") == {"usage_usec": 10, "nr_periods": 3}
    assert parse_limit("max\n") is None and parse_limit("1024\n") == 1024
    assert parse_v1_limit("9223372036854771712") is None and parse_v1_limit("4096") == 4096
    assert parse_cpu_max("max 100000\n") == (None, 100000)
    assert parse_cpu_max("25000 100000\n") == (25000, 100000)
    assert parse_io_stat("8:0 rbytes=1 wbytes=2 rios=3\n\n") == {"8:0": {"rbytes": 1, "wbytes": 2, "rios": 3}}


def test_prometheus_text() -> None:
    text = (
        "# HELP gpu_temp Temperature\n# TYPE gpu_temp gauge\n"
        'gpu_temp{gpu="0",name="A100 \\"SXM\\""} 71.5\n'
        "up 1 1700000000000\n"
        "errors_total +Inf\n"
        "nan_metric NaN\n"
    )
    samples = parse_prometheus_text(text)
    assert samples[0] == {"name": "gpu_temp", "labels": {"gpu": "0", "name": 'A100 "SXM"'}, "value": 71.5}
    assert samples[1] == {"name": "up", "labels": {}, "value": 1.0}
    assert samples[2]["value"] == "inf"
    assert samples[3]["value"] == "nan"


@pytest.mark.parametrize(
    "text", ["not a metric line at all!", 'm{a="1" 2', 'm{1a="x"} 1', "m abc", 'm{a="x"b="y"} 1']
)
def test_prometheus_text_rejects_garbage(text: str) -> None:
    with pytest.raises(ParseError, match="line 1"):
        parse_prometheus_text(text)


def test_prometheus_text_sample_limit() -> None:
    with pytest.raises(ParseError, match="more than 3 samples"):
        parse_prometheus_text("a 1\nb 2\nc 3\nd 4\n", limit=3)


def test_throttle_reasons() -> None:
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_throttle_reasons(0x1000) == ["unknown_0x1000"]


def test_histogram_delta_and_schedstat() -> None:
    assert histogram_delta({1: 5}, {1: 7, 3: 2}) == [0, 2, 0, 2]
    assert histogram_delta({}, {}) == [0]
    assert histogram_delta({2: 9}, {2: 4}) == [0]  # a reset never gives negative counts
    text = (
        "version 15\ntimestamp 1\ncpu0 0 0 0 0 0 0 100 2000 5\ndomain0 3 1 2\ncpu1 0 0 0 0 0 0 100 3000 5\n"
    )
    assert parse_schedstat_wait(text) == 5000
    assert math.isfinite(parse_schedstat_wait(""))


def test_cgroup_procs_are_counted_and_a_huge_list_is_many(tmp_path: Path) -> None:
    assert parse_procs_count("1\n22\n\n333\n") == 3 and parse_procs_count("") == 0
    assert parse_procs_count("1\ngarbage\n2\n") == 2  # a garbage line is no process
    f = tmp_path / "cgroup.procs"
    f.write_text("7\n8\n")
    assert _procs(f) == 2
    f.write_text("1234567\n" * (PROCS_READ_MAX // 8 + 1))
    assert _procs(f) is None  # past the read bound: "many", not a number made up
    assert _procs(tmp_path / "gone") is None
