"""Pure parsing for cgroup layouts: mountinfo, Kubernetes ids in cgroup paths, stat files.

Readers live in collector/sources/cgroup.py; everything here takes text and is
tested on literals, except Layout, which maps the mounts to paths under the configured
sysfs root (discover_layout) and reads one file (memory_root: cgroup.controllers).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# kubepods paths, cgroupfs driver:   /kubepods/burstable/pod<uid>/<container id>
# systemd driver:  /kubepods.slice/kubepods-burstable.slice/
#                  kubepods-burstable-pod<uid_with_underscores>.slice/
#                  cri-containerd-<id>.scope (or docker-<id>.scope, crio-<id>.scope)
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
_QOS = re.compile(r"kubepods[-/.]?(burstable|besteffort)")
_CONTAINER = re.compile(r"(?:^|/|-)([0-9a-f]{64})(?:\.scope)?$")


@dataclass(frozen=True)
class KubeIds:
    pod_uid: str
    container_id: str | None
    qos: str  # guaranteed, burstable or besteffort


def parse_kube_ids(path: str) -> KubeIds | None:
    """Pod UID, container id and QoS class from a kubepods cgroup path, or None."""
    if "kubepods" not in path:
        return None
    pod = _POD.search(path)
    if pod is None:
        return None
    qos = _QOS.search(path)
    container = _CONTAINER.search(path.rstrip("/"))
    return KubeIds(
        pod_uid=pod.group(1).replace("_", "-"),
        container_id=container.group(1) if container else None,
        qos=qos.group(1) if qos else "guaranteed",
    )


V1_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "blkio",
        "pids",
        "freezer",
        "devices",
        "net_cls",
        "net_prio",
        "perf_event",
        "hugetlb",
        "rdma",
        "misc",
    }
)


@dataclass(frozen=True)
class CgroupMount:
    version: int  # 1 or 2
    path: str  # mount point
    controllers: frozenset[str]  # v1: the controllers of this hierarchy; v2: empty (see cgroup.controllers)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """cgroup and cgroup2 mounts from /proc/self/mountinfo."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        fstype, options = rf[0], rf[2]
        mount = _unescape(lf[4])
        if fstype == "cgroup2":
            out.append(CgroupMount(2, mount, frozenset()))
        elif fstype == "cgroup":
            ctl = frozenset(o for o in options.split(",") if o in V1_CONTROLLERS or o.startswith("name="))
            out.append(CgroupMount(1, mount, ctl))
    return out


@dataclass(frozen=True)
class Layout:
    """Where each controller lives here, translated under the configured sysfs root."""

    v2: Path | None  # the unified hierarchy, if mounted
    v1: dict[str, Path]  # controller -> hierarchy root

    @property
    def mode(self) -> str:
        if self.v2 is not None and not self.v1:
            return "v2"
        return "hybrid" if self.v2 is not None else "v1"

    def memory_root(self) -> tuple[int, Path] | None:
        if "memory" in self.v1:
            return 1, self.v1["memory"]
        if self.v2 is not None:
            try:
                controllers = (self.v2 / "cgroup.controllers").read_text()
            except OSError:
                controllers = ""
            if "memory" in controllers.split():
                return 2, self.v2
        return None


def discover_layout(mounts: list[CgroupMount], sysfs_root: Path) -> Layout:
    def translate(mount: str) -> Path:
        # Mount points are in our namespace (/sys/fs/cgroup/...); the host's may sit under /host/sys.
        rel = os.path.relpath(mount, "/sys")
        return sysfs_root / rel if not rel.startswith("..") else Path(mount)

    v2 = None
    v1: dict[str, Path] = {}
    for m in mounts:
        if m.version == 2:
            v2 = translate(m.path)
        else:
            for ctl in m.controllers:
                if not ctl.startswith("name="):
                    v1.setdefault(ctl, translate(m.path))
    return Layout(v2, v1)


def parse_flat_keyed(text: str) -> dict[str, int]:
    """Files like cpu.stat, memory.events, memory.stat: "key value" per line."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_limit(text: str) -> int | None:
    """memory.max / pids.max style: a number, or "max" for no limit (None)."""
    value = text.strip()
    if value == "max":
        return None
    return int(value)


def parse_v1_limit(text: str) -> int | None:
    """v1 memory.limit_in_bytes: a page-rounded LONG_MAX means no limit."""
    value = int(text.strip())
    return None if value >= (1 << 62) else value


def parse_io_stat(text: str) -> dict[str, dict[str, int]]:
    """v2 io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0" per device."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        fields = {}
        for kv in parts[1:]:
            k, _, v = kv.partition("=")
            if v.isdigit():
                fields[k] = int(v)
        out[parts[0]] = fields
    return out


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """v2 cpu.max: "quota period" with quota "max" for none."""
    quota, period = text.split()
    return (None if quota == "max" else int(quota)), int(period)
