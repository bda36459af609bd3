"""Culprits at the level that owns the fault, not the pid that happened to be on top.

A fault belongs to the entity an operator would act on: the pod (and its container),
the container, the systemd service, a cgroup made for the workload, the process tree
whose parent forks the workers, or, failing all of those, the program itself. The
culprit names that owner and carries its members (pids, comms, counts); its ``key``
(what the fingerprint is built from) names only the owner, so workers that come and
go, an OOM-killed program restarted under a new pid, or a fork storm's short-lived
children keep one fingerprint and so one run.

Pure functions over the rows detectors already read: process rows (pid, ppid, comm,
cgroup, pod_uid, container_id) and the cgroup table (path, pids.current).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from controller.detectors.base import Culprit

MEMBERS_MAX = 8  # pids listed on a culprit (the count says how many there were)
# Cgroups every process of a kind lands in: a process there tells nothing about its owner.
_GENERIC_CGROUP = re.compile(
    r"^/$|^/(user|system|machine|init)\.slice$|^/init\.scope$|/user-\d+\.slice$|/session-[^/]+\.scope$"
    r"|/user@\d+\.service(/.*)?$"
)
# Container runtimes' cgroup names (systemd and cgroupfs drivers).
_CONTAINER = re.compile(
    r"(?:docker|cri-containerd|crio|libpod)-([0-9a-f]{12,64})\.scope$|/docker/([0-9a-f]{12,64})$"
)
# A service, or a transient scope (systemd-run); session and init scopes are generic above.
_UNIT = re.compile(r"/([A-Za-z0-9@_.:\\-]+\.(?:service|scope))$")
_KERNEL_PARENTS = {0, 1, 2}  # no parent, init (adopts orphans, supervises everything), kthreadd


def _pid(row: dict[str, Any], key: str = "pid") -> int | None:
    v = row.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def finite(v: Any) -> float | None:
    """A collector's number as a finite float, or None (missing, garbage, huge, infinite)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer past a double's range
        return None
    return f if math.isfinite(f) else None


def _w(row: dict[str, Any], weight: str | None) -> float:
    """A row's weight (0 for a missing or garbage value: rows come from collectors)."""
    return (finite(row.get(weight)) or 0.0) if weight else 0.0


def _d(row: dict[str, Any], key: str) -> dict[str, Any]:
    v = row.get(key)
    return v if isinstance(v, dict) else {}


def _cg(row: dict[str, Any]) -> str | None:
    v = row.get("cgroup")
    return v if isinstance(v, str) else None


def generic_cgroup(path: str | None) -> bool:
    return not path or bool(_GENERIC_CGROUP.search(path))


def members(rows: Sequence[dict[str, Any]], weight: str | None = None) -> dict[str, Any]:
    """What an owner holds: its pids (the heaviest first, bounded), comms and counts."""
    ordered = sorted(rows, key=lambda r: -_w(r, weight)) if weight else list(rows)
    pids = [p for p in (_pid(r) for r in ordered) if p is not None]
    comms = Counter(str(r.get("comm")) for r in rows if r.get("comm"))
    out: dict[str, Any] = {
        "pids": pids[:MEMBERS_MAX],
        "comms": dict(comms.most_common(MEMBERS_MAX)),
        "count": len(rows),
    }
    ppids = sorted({p for p in (_pid(r, "ppid") for r in rows) if p is not None})
    if ppids:
        out["ppids"] = ppids[:MEMBERS_MAX]
    return out


def comm_label(comms: dict[str, int]) -> str:
    """What members run, for a summary: the three commonest programs, with their counts."""
    top = sorted(comms.items(), key=lambda cn: -cn[1])[:3]
    return ", ".join(f"{c} x{n}" if n > 1 else c for c, n in top)


def _label(rows: Sequence[dict[str, Any]]) -> str:
    return comm_label(Counter(str(r.get("comm")) for r in rows))


def _cgroup_dedicated(path: str, rows: Sequence[dict[str, Any]], cgroups: Sequence[dict[str, Any]]) -> bool:
    """Whether the cgroup was made for this workload: someone set a limit on it, or it holds
    the workers and little else (its process count, where the collector read one). A cgroup
    that every command of a session lands in is neither, and names no owner."""
    if generic_cgroup(path):
        return False
    row = next((c for c in cgroups if c.get("path") == path), None)
    if row is None:
        return False
    pids = _d(row, "pids")
    limited = (
        _d(row, "memory").get("max"),
        _d(row, "memory").get("high"),
        _d(row, "cpu").get("quota_cores"),
        pids.get("max"),
    )
    if any(isinstance(v, int | float) and not isinstance(v, bool) for v in limited):
        return True
    # Processes in it (cgroup.procs; pids.current counts threads too, so it is the fallback):
    # the workers, a wrapper each (timeout, a shell), and one supervisor at most.
    count = row.get("procs") if isinstance(row.get("procs"), int) else pids.get("current")
    return isinstance(count, int) and not isinstance(count, bool) and count <= 2 * len(rows) + 1


def _single_owner(
    row: dict[str, Any],
    group: Sequence[dict[str, Any]],
    cgroups: Sequence[dict[str, Any]],
) -> tuple[str, str, str, dict[str, Any]] | None:
    """(kind, id, key, detail) of the owner one row names by itself, or None."""
    if row.get("pod_uid"):
        uid = str(row["pod_uid"])
        return (
            "pod",
            uid,
            f"pod:{uid}",
            {"container_id": row.get("container_id"), "cgroup": row.get("cgroup")}
            # Named by the collector where it reads the node's pods (collector/topology.py).
            | {
                k: row[k]
                for k in ("namespace", "pod", "container", "workload")
                if isinstance(row.get(k), str)
            },
        )
    path = _cg(row)
    if path is not None:
        m = _CONTAINER.search(path)
        cid = row.get("container_id") or (m and (m.group(1) or m.group(2)))
        if cid:
            return "container", str(cid)[:12], f"container:{cid}", {"cgroup": path}
        u = _UNIT.search(path)
        if u and not generic_cgroup(path):
            return "unit", u.group(1), f"unit:{u.group(1)}", {"cgroup": path}
        if _cgroup_dedicated(path, group, cgroups):
            return "cgroup", path, f"cgroup:{path}", {"cgroup": path}
    return None


def owner(
    rows: Sequence[dict[str, Any]],
    *,
    weight: str | None = None,
    all_rows: Sequence[dict[str, Any]] = (),
    cgroups: Sequence[dict[str, Any]] = (),
    reason: str = "no process table",
) -> Culprit:
    """The entity that owns the fault these rows show (the heaviest first by ``weight``)."""
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return Culprit("host", "host", {"reason": reason}, key="host")
    if weight:
        rows = sorted(rows, key=lambda r: -_w(r, weight))
    all_rows = list(all_rows) or rows
    # Group the rows by the owner each names by itself; the heaviest group owns the fault.
    groups: dict[str, list[dict[str, Any]]] = {}
    named: dict[str, tuple[str, str, str, dict[str, Any]]] = {}
    for r in rows:
        same_cgroup = [x for x in rows if _cg(x) == _cg(r)]
        found = _single_owner(r, same_cgroup, cgroups)
        k = found[2] if found else ""
        groups.setdefault(k, []).append(r)
        if found:
            named[k] = found

    def load(k: str) -> float:
        return sum(_w(x, weight) for x in groups[k]) if weight else len(groups[k])

    best = max(groups, key=lambda k: (load(k), k != ""))
    if best:
        kind, cid, key, detail = named[best]
        group = groups[best]
        notes = _others(rows, group)
        return Culprit(kind, cid, detail | members(group, weight) | notes, key=key)
    loose = groups[""]
    # No cgroup of their own: the parent whose children carry the load, when it is not init.
    parents: dict[int, float] = {}
    for r in loose:
        p = _pid(r, "ppid")
        if p is not None and p not in _KERNEL_PARENTS:
            # Weights are finite, but their sum may not be: inf still compares.
            parents[p] = parents.get(p, 0.0) + (_w(r, weight) if weight else 1.0)
    if parents:
        ppid = max(parents, key=lambda k: parents[k])
        tree = [r for r in loose if _pid(r, "ppid") == ppid]
        if len(tree) >= 2:
            return tree_culprit(ppid, tree, all_rows, rows, weight=weight)
    top = loose[0]
    comm, cgroup = top.get("comm"), _cg(top)
    detail = {"pid": _pid(top), "comm": comm, "cgroup": cgroup} | members(
        [r for r in loose if r.get("comm") == comm], weight
    )
    others = {str(r.get("comm")) for r in loose if r.get("comm") != comm}
    if others and weight and _w(loose[1], weight) >= 0.5 * (_w(top, weight) or 1.0):
        detail["ambiguous"] = f"{', '.join(sorted(others)[:3])} carry a similar load under other parents"
    return Culprit("process", f"{comm}[{_pid(top)}]", detail, key=f"process:{comm}@{cgroup}")


def tree_culprit(
    ppid: int,
    children: Sequence[dict[str, Any]],
    all_rows: Sequence[dict[str, Any]],
    blamed: Sequence[dict[str, Any]] = (),
    *,
    parent_comm: str | None = None,
    weight: str | None = None,
) -> Culprit:
    """A process tree: the parent that forks the workers, its children as members."""
    parent = next((r for r in all_rows if _pid(r) == ppid), None)
    pcomm = parent_comm or (str(parent.get("comm")) if parent and parent.get("comm") else None)
    head = f"{pcomm}[{ppid}]" if pcomm else f"pid {ppid}"
    # The workers' cgroup when they share one (what a cap or a freeze acts on), else the parent's.
    theirs = {c for r in children if (c := _cg(r))}
    cgroup = theirs.pop() if len(theirs) == 1 else (_cg(parent) if parent else None)
    detail: dict[str, Any] = {"pid": ppid, "comm": pcomm, "cgroup": cgroup} | members(children, weight)
    detail.pop("ppids", None)
    siblings = {
        str(r.get("comm"))
        for r in all_rows
        if _pid(r, "ppid") == ppid and r not in children and str(r.get("comm")) not in detail["comms"]
    }
    if siblings:
        detail["ambiguous"] = f"pid {ppid} also parents {', '.join(sorted(siblings)[:3])}"
    detail |= _others(blamed, children)
    # The parent pid is the owner: its workers churn, it does not (a restarted parent is a new tree).
    return Culprit("process_tree", head, detail, key=f"tree:{pcomm}[{ppid}]")


def _others(rows: Sequence[dict[str, Any]], group: Sequence[dict[str, Any]]) -> dict[str, Any]:
    rest = [r for r in rows if r not in group]
    return {"others": _label(rest)} if rest else {}


def service_of(kind: str, cid: str, detail: dict[str, Any]) -> str | None:
    """What the culprit runs as, the same on every host that runs it: the workload (when the
    collector names a pod's), the systemd unit, a dedicated cgroup's path, the program (a
    tree's parent, a process, a pod's or container's heaviest member); None for host-level
    culprits. A pod's UID and a container's id differ per host, so neither is a service."""
    workload = detail.get("workload")
    if isinstance(workload, str) and workload:
        return f"workload:{workload}"
    if kind == "unit":
        return f"unit:{cid}"
    if kind == "cgroup":
        return f"cgroup:{cid}"
    comm = detail.get("comm")
    if kind in ("pod", "container") or not isinstance(comm, str):
        comms = detail.get("comms")
        comm = next(iter(comms), None) if isinstance(comms, dict) and comms else None
    if kind in ("process_tree", "process", "pod", "container") and isinstance(comm, str) and comm:
        return f"program:{comm[:64]}"
    if kind == "socket":  # a listener is its port anywhere; a peer (a shared backend) its address
        return f"listener:{cid.rsplit(':', 1)[-1]}" if "backlog" in detail else f"peer:{cid}"
    return None
