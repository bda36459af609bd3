"""Causes over symptoms: which finding explains which, as data.

Each edge names a cause family, a symptom family, the condition under which the
cause explains that particular symptom (a function of the two findings' culprits),
and why, in words for the chain and the report. An explained finding is a symptom:
it ranks below its cause, travels with the cause's hypothesis as supporting
evidence, and opens no run of its own. The edges form no cycle (tested), so every
symptom leads to a cause that is not itself explained.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from controller.detectors.base import Culprit, Finding
from controller.detectors.general import GENERAL_FAMILIES

Condition = Callable[[Finding, Finding], bool]
_RECLAIM_THREADS = ("kswapd", "kcompactd")
_WRITEBACK_THREADS = ("kworker", "kswapd", "kcompactd", "jbd2", "flush-")
_WILDCARD = ("0.0.0.0", "::", "*", "")
# XIDs the driver raises for memory errors (uncorrectable ECC, row remap, contained/uncontained).
_ECC_XIDS = frozenset({48, 63, 64, 92, 94, 95})


@dataclass(frozen=True)
class Edge:
    cause: str
    symptom: str
    when: str  # a key of CONDITIONS
    why: str


def _pids(c: Culprit) -> set[int]:
    d = c.detail
    out = {p for p in d.get("pids") or [] if isinstance(p, int)}
    if isinstance(d.get("pid"), int):
        out.add(d["pid"])
    return out


def _cgroups(c: Culprit) -> set[str]:
    out = [c.detail.get("cgroup"), c.id if c.kind == "cgroup" else None]
    return {x for x in out if isinstance(x, str) and x not in ("", "/")}


def _comms(c: Culprit) -> set[str]:
    comms = c.detail.get("comms")
    out = {str(k) for k in comms} if isinstance(comms, dict) else set()
    if c.detail.get("comm"):
        out.add(str(c.detail["comm"]))
    return out


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def same_tree(cause: Finding, symptom: Finding) -> bool:
    """The fork storm's parent, or its children, are the processes burning the CPU."""
    c, s = cause.culprit, symptom.culprit
    if c.identity == s.identity:
        return True
    parent = c.detail.get("pid")
    ppids = {p for p in s.detail.get("ppids") or [] if isinstance(p, int)}
    return isinstance(parent, int) and (parent in _pids(s) or parent in ppids)


def _addr_port(culprit_id: str) -> tuple[str, str] | None:
    addr, sep, port = culprit_id.rpartition(":")
    return (addr.strip("[]"), port) if sep else None


def to_listener(cause: Finding, symptom: Finding) -> bool:
    """The retransmits go to the port (and address, or any) of the listener whose queue is full."""
    lst, peer = _addr_port(cause.culprit.id), _addr_port(symptom.culprit.id)
    if lst is None or peer is None or lst[1] != peer[1]:
        return False
    if lst[0] in _WILDCARD or lst[0] == peer[0]:
        return True
    try:  # a listener on a local address takes connects to loopback only when it is loopback itself
        return ipaddress.ip_address(lst[0]).is_loopback and ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:
        return False


def reclaim_io(cause: Finding, symptom: Finding) -> bool:
    """The IO is the kernel's reclaim and writeback, or comes from inside the cgroup at its limit."""
    s = symptom.culprit
    if s.kind in ("device", "host"):
        return True
    if any(comm.startswith(_WRITEBACK_THREADS) for comm in _comms(s)) or 2 in (s.detail.get("ppids") or []):
        return True
    return any(_inside(x, y) for x in _cgroups(s) for y in _cgroups(cause.culprit)) or bool(
        _pids(s) & _pids(cause.culprit)
    )


def reclaim_cpu(cause: Finding, symptom: Finding) -> bool:
    """The CPU goes to the kernel's reclaim threads."""
    comms = _comms(symptom.culprit)
    return bool(comms) and all(comm.startswith(_RECLAIM_THREADS) for comm in comms)


def same_cgroup(cause: Finding, symptom: Finding) -> bool:
    """The processes under pressure live in the throttled cgroup (or pod)."""
    c, s = cause.culprit, symptom.culprit
    if c.identity == s.identity:
        return True
    return any(_inside(x, y) for x in _cgroups(s) for y in _cgroups(c))


def nic_loss(cause: Finding, symptom: Finding) -> bool:
    """Packets lost on a real interface are retransmitted (loopback loses nothing on the wire)."""
    return cause.culprit.kind == "interface" and cause.culprit.id != "lo"


def ecc_xid(cause: Finding, symptom: Finding) -> bool:
    """The XIDs are the driver's report of the same device's memory errors."""
    xids = set(symptom.culprit.detail.get("xids") or [])
    return cause.culprit.id == symptom.culprit.id and bool(xids) and xids <= _ECC_XIDS


def nvlink_xid(cause: Finding, symptom: Finding) -> bool:
    """The XIDs are the driver's report of the same device's NVLink errors (74)."""
    xids = set(symptom.culprit.detail.get("xids") or [])
    return cause.culprit.id == symptom.culprit.id and xids == {74}


def holder_device(cause: Finding, symptom: Finding) -> bool:
    """The idle holder's memory is what fills that device."""
    return cause.culprit.detail.get("gpu") == symptom.culprit.id


def same_owner(cause: Finding, symptom: Finding) -> bool:
    return cause.culprit.identity == symptom.culprit.identity


def known_stronger(cause: Finding, symptom: Finding) -> bool:
    """A known fault at least as strong: the signals that moved beside it are its effects
    (a weaker one would hide a broader trouble behind a lesser cause)."""
    return cause.score >= symptom.score


def listed(cause: Finding, symptom: Finding) -> bool:
    """The anomalous signal is one of those the instability counts."""
    return symptom.signal in (cause.culprit.detail.get("signals") or [])


_LOADS = {
    "cpu_saturation": "cpu",
    "memory_pressure": "memory",
    "io_pressure": "io",
    "network_throughput": "network",
}


def loads_resource(cause: Finding, symptom: Finding) -> bool:
    """The finding names the owner of one of the resources near their limits."""
    return _LOADS.get(cause.family) in (symptom.culprit.detail.get("resources") or [])


CONDITIONS: dict[str, Condition] = {
    "same_tree": same_tree,
    "to_listener": to_listener,
    "reclaim_io": reclaim_io,
    "reclaim_cpu": reclaim_cpu,
    "same_cgroup": same_cgroup,
    "nic_loss": nic_loss,
    "ecc_xid": ecc_xid,
    "nvlink_xid": nvlink_xid,
    "holder_device": holder_device,
    "same_owner": same_owner,
    "known_stronger": known_stronger,
    "listed": listed,
    "loads_resource": loads_resource,
}
ANY_KNOWN = "*"  # as a cause: any family but the general ones (controller/detectors/general.py)
GENERAL = frozenset(GENERAL_FAMILIES)

EDGES: tuple[Edge, ...] = (
    Edge("runaway_forks", "cpu_saturation", "same_tree", "the fork storm's own processes burn the CPU"),
    Edge(
        "listen_queue_overflow",
        "tcp_retransmit_surge",
        "to_listener",
        "clients retransmit the SYNs a full accept queue drops",
    ),
    Edge(
        "memory_pressure",
        "io_pressure",
        "reclaim_io",
        "reclaim and writeback under memory pressure make the IO",
    ),
    Edge("memory_pressure", "cpu_saturation", "reclaim_cpu", "the CPU goes to memory reclaim"),
    Edge(
        "cgroup_cpu_throttling",
        "cpu_saturation",
        "same_cgroup",
        "a CPU quota makes the pressure inside its own cgroup",
    ),
    Edge("nic_errors", "tcp_retransmit_surge", "nic_loss", "packets lost on the interface are retransmitted"),
    Edge("gpu_ecc", "gpu_xid", "ecc_xid", "the XIDs report the same device's uncorrectable ECC errors"),
    Edge("gpu_nvlink_degradation", "gpu_xid", "nvlink_xid", "XID 74 reports the same device's NVLink errors"),
    Edge(
        "gpu_memory_held_idle",
        "gpu_memory_pressure_low_util",
        "holder_device",
        "the idle process's memory is what fills the device",
    ),
    Edge(
        "input_pipeline_starvation",
        "cpu_saturation",
        "same_owner",
        "the data loader's CPU burn is what starves the GPU",
    ),
    Edge("host_instability", "anomaly", "listed", "one of the signals the host's instability counts"),
    Edge(ANY_KNOWN, "anomaly", "known_stronger", "a signal that moved with a known fault that is live"),
    Edge(
        ANY_KNOWN, "host_instability", "known_stronger", "the signals moved with a known fault that is live"
    ),
    *(
        Edge(family, "multi_resource_saturation", "loads_resource", f"{family} names who loads {res}")
        for family, res in _LOADS.items()
    ),
)
_BY_SYMPTOM: dict[str, list[Edge]] = {}
for _e in EDGES:
    _BY_SYMPTOM.setdefault(_e.symptom, []).append(_e)


def _causes(edge_cause: str, family: str) -> bool:
    return family == edge_cause or (edge_cause == ANY_KNOWN and family not in GENERAL)


@dataclass(frozen=True)
class Explained:
    cause: int  # index of the cause among the findings
    edge: Edge


def explain(
    findings: Sequence[Finding], scores: Sequence[float] | None = None, live: Sequence[bool] | None = None
) -> dict[int, Explained]:
    """symptom index -> the cause that explains it (the strongest, where several do). With
    ``live``, a cause no longer showing explains no symptom that still is."""
    scores = scores if scores is not None else [f.score for f in findings]
    live = live if live is not None else [True] * len(findings)
    out: dict[int, Explained] = {}
    for i, s in enumerate(findings):
        edges = _BY_SYMPTOM.get(s.family)
        if not edges:
            continue
        best: Explained | None = None
        for j, c in enumerate(findings):
            if j == i or (live[i] and not live[j]):
                continue
            for e in edges:
                stronger = best is None or scores[j] > scores[best.cause]
                if stronger and _causes(e.cause, c.family) and CONDITIONS[e.when](c, s):
                    best = Explained(j, e)
        if best is not None:
            out[i] = best
    return out


def root_of(i: int, explained: dict[int, Explained]) -> int:
    """The cause at the end of a chain of symptoms (acyclic by construction of EDGES)."""
    seen = {i}
    while i in explained:
        i = explained[i].cause
        if i in seen:  # two findings of one family pair cannot loop, but never spin
            break
        seen.add(i)
    return i


def symptom_record(f: Finding, confidence: float, edge: Edge, fp: str) -> dict[str, Any]:
    """How a symptom travels on its cause's hypothesis (bounded: a summary, not the finding)."""
    return {
        "family": f.family,
        "culprit": {"kind": f.culprit.kind, "id": f.culprit.id},
        "confidence": confidence,
        "summary": f.summary,
        "signal": f.signal,
        "why": edge.why,
        "fingerprint": fp,
    }
