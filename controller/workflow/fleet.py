"""The fleet correlator: host runs of one fault across hosts become one fleet incident.

It reads what the hosts' evaluations already found, never raw telemetry: each time a
host's top firing hypothesis goes to a run, the trigger side hands it here as a
*sighting* (host, run, family, service, labels, the tail of the signal it turned on).
At most every ``evaluate_every_s`` the sightings of the last ``window_s`` are grouped:

1. **Same fault, same service**: ``min_hosts`` or more hosts with the same family on the
   same service (controller/detectors/owners.py ``service_of``: the workload, the unit,
   the program, the listener's port, the backend they all retransmit to). A host-level
   culprit has no service: the same family on hosts that share a label group (a zone's
   network) is grouped by that group instead.
2. **Degrading together**: the hosts left, within each label group (the values of the
   ``group_by`` labels), whose signals correlate pairwise (Pearson >= ``pearson``, over the
   window's time bins) even with different top families; connected hosts of at least
   ``min_hosts`` are one group.

Cost: one pass over the sightings, plus a correlation matrix per label group of at most
``max_group`` hosts, so it grows linearly with hosts (bench/fleet_bench.py measures it).

The blast radius of a group names its hosts, services, zones and share of the cluster
(and of all hosts known). FleetIncidents turns groups into fleet runs: a run of scope
``fleet`` (host ``~fleet``, a name no collector can have) with its own chain, plan, gate
and approval; member runs point at it (``fleet_run_id``) and stop paging on their own.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import msgspec
import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from controller.config import FleetSettings
from controller.detectors import Evidence
from controller.store import sightings
from controller.workflow.analysis import Hypothesis

log = logging.getLogger(__name__)
FLEET_HOST = "~fleet"  # '~' is outside the wire's host id alphabet: no collector collides
MEMBERS_LISTED = 50  # hosts named in a blast radius (the count says how many there were)
SERIES_MEMBERS = 32  # member hosts whose signal tail goes into the fleet evidence
MIN_BINS = 6  # time bins two hosts need in common to be correlated
BINS = 30


@dataclass
class Sighting:
    host: str
    run_id: str
    family: str
    service: str | None
    labels: dict[str, str]
    confidence: float
    at: float  # the controller's clock when last sighted
    started: float | None  # the fault's onset on the host's clock
    signal: str
    series: list[tuple[float, float]]  # the signal's tail, the host's clock
    culprit: dict[str, Any] = field(default_factory=dict)
    bins: Any = None  # the tail binned for correlation (computed once, on first use)


@dataclass(frozen=True)
class FleetGroup:
    key: str  # what makes it one fault: its fingerprint is built from this
    method: str  # same_service | same_group | correlated
    family: str
    service: str | None
    group: dict[str, str]  # the label group's values (empty for a service across groups)
    members: tuple[Sighting, ...]
    correlation: tuple[
        tuple[str, str, float], ...
    ] = ()  # the strongest (host, host, r) edges that joined them

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"fleet|{self.key}".encode()).hexdigest()[:24]

    @property
    def hosts(self) -> list[str]:
        return sorted(s.host for s in self.members)


def _lower_is_worse(signal: str) -> bool:
    return "available" in signal or "free" in signal


def label_group(labels: Mapping[str, str], keys: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The values of ``keys`` a host has: hosts with the same tuple share a group."""
    return tuple((k, labels[k]) for k in keys if k in labels)


def _binned(series: Sequence[tuple[float, float]], start: float, width: float) -> np.ndarray:
    """Mean per time bin over [start, start + BINS*width), NaN where a bin has no point."""
    out = np.full(BINS, np.nan)
    if not series:
        return out
    arr = np.asarray(series, dtype=float)
    idx = np.floor((arr[:, 0] - start) / width).astype(int)
    ok = (idx >= 0) & (idx < BINS) & np.isfinite(arr[:, 1])
    if not ok.any():
        return out
    sums = np.bincount(idx[ok], weights=arr[ok, 1], minlength=BINS)
    counts = np.bincount(idx[ok], minlength=BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def _bins_of(s: Sighting, window_s: float) -> np.ndarray:
    if s.bins is None or len(s.bins) != BINS:
        end = s.series[-1][0] if s.series else 0.0
        s.bins = _binned(s.series, end - window_s + 1e-9, window_s / BINS)
    bins: np.ndarray = s.bins
    return bins


def correlation_matrix(members: Sequence[Sighting], window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(r, usable pairs) for a group, from the members' binned tails.

    Each host's tail is binned on its own clock's last ``window_s`` (clocks differ by
    host; the window's shape is what is compared). A pair needs MIN_BINS bins in common;
    a host's missing bins take its own mean (they count as no movement, which only ever
    lowers r). One matrix product for the whole group: k hosts cost k^2 * BINS."""
    m = np.vstack([_bins_of(s, window_s) for s in members])
    present = np.isfinite(m)
    counts = present.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.nansum(np.where(present, m, 0.0), axis=1) / np.maximum(counts, 1)
        filled = np.where(present, m, means[:, None])
        centred = filled - filled.mean(axis=1, keepdims=True)
        std = np.sqrt((centred**2).mean(axis=1))
        moving = std > 1e-9
        z = np.where(moving[:, None], centred / np.where(moving, std, 1.0)[:, None], 0.0)
    r = (z @ z.T) / BINS
    p = present.astype(np.float32)  # a float product runs on BLAS; an integer one does not
    shared = p @ p.T
    usable = moving & (counts >= MIN_BINS)
    pairs = (shared >= MIN_BINS) & usable[:, None] & usable[None, :]
    return r, pairs


def correlate(members: Sequence[Sighting], threshold: float, window_s: float) -> list[tuple[int, int, float]]:
    """Pairs (i, j, r), i < j, whose signals correlate at ``threshold`` or more."""
    if len(members) < 2:
        return []
    r, pairs = correlation_matrix(members, window_s)
    i, j = np.nonzero(np.triu((r >= threshold) & pairs, k=1))
    return [(int(a), int(b), round(float(r[a, b]), 3)) for a, b in zip(i, j, strict=True)]


def components(linked: np.ndarray) -> np.ndarray:
    """Each node's component label (the smallest index in it), by label propagation over a
    symmetric boolean adjacency matrix: numpy passes, as many as the longest chain."""
    k = len(linked)
    lab = np.arange(k)
    while True:
        nb = np.where(linked, lab[None, :], k).min(axis=1)
        new = np.minimum(lab, nb)
        if np.array_equal(new, lab):
            return lab
        lab = new


class Correlator:
    """Sightings in, groups out; bounded (``max_hosts`` sightings, ``max_group`` per correlation)."""

    def __init__(self, settings: FleetSettings) -> None:
        self.s = settings
        self._lock = threading.Lock()
        self._sightings: OrderedDict[str, Sighting] = OrderedDict()
        self.evictions = 0

    def observe(
        self, host: str, run_id: str, top: Hypothesis, ev: Evidence, at: float, started: float | None
    ) -> Sighting:
        n = self.s.series_points
        series = ev.tail(top.signal, n) if top.signal else []
        if _lower_is_worse(top.signal):  # degrading together means moving the bad way together
            series = [(t, -v) for t, v in series]
        sighting = Sighting(
            host=host,
            run_id=run_id,
            family=top.family,
            service=top.culprit.get("service") if isinstance(top.culprit.get("service"), str) else None,
            labels=dict(ev.labels),
            confidence=top.confidence,
            at=at,
            started=started,
            signal=top.signal,
            series=[(float(t), float(v)) for t, v in series],
            culprit={k: top.culprit.get(k) for k in ("kind", "id", "service") if k in top.culprit},
        )
        with self._lock:
            self._sightings.pop(host, None)
            self._sightings[host] = sighting
            while len(self._sightings) > self.s.max_hosts:
                self._sightings.popitem(last=False)
                self.evictions += 1
        return sighting

    def replace(self, sightings: Sequence[Sighting]) -> None:
        """Take these (every replica's, from the store) in place of what this process sighted."""
        fresh: OrderedDict[str, Sighting] = OrderedDict()
        for s in sorted(sightings, key=lambda s: s.at)[-self.s.max_hosts :]:
            fresh.pop(s.host, None)
            fresh[s.host] = s
        with self._lock:
            self._sightings = fresh

    def forget(self, host: str, run_id: str | None = None) -> None:
        with self._lock:
            s = self._sightings.get(host)
            if s is not None and (run_id is None or s.run_id == run_id):
                del self._sightings[host]

    def __len__(self) -> int:
        return len(self._sightings)

    def current(self, now: float) -> list[Sighting]:
        """The sightings of the window, oldest first (older ones are dropped)."""
        floor = now - self.s.window_s
        with self._lock:
            while self._sightings:
                first = next(iter(self._sightings.values()))
                if first.at >= floor:
                    break
                self._sightings.popitem(last=False)
            return list(self._sightings.values())

    def groups(self, now: float) -> list[FleetGroup]:
        found = self.current(now)
        keys = tuple(self.s.group_by)
        out: list[FleetGroup] = []
        taken: set[str] = set()
        # 1. the same family on the same service, or on host-level culprits in one label group
        by_key: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[Sighting]] = {}
        lgs = {s.host: label_group(s.labels, keys) for s in found}
        for s in found:
            lg = lgs[s.host]
            if s.service is not None:
                by_key.setdefault((s.family, s.service, ()), []).append(s)
            elif lg:
                by_key.setdefault((s.family, "", lg), []).append(s)
        for (family, service, lg), members in by_key.items():
            if len({m.host for m in members}) < self.s.min_hosts:
                continue
            group = dict(lg) if lg else _common(members, keys)
            key = f"{family}|{service}" if service else f"{family}|" + ",".join(f"{k}={v}" for k, v in lg)
            out.append(
                FleetGroup(
                    key,
                    "same_service" if service else "same_group",
                    family,
                    service or None,
                    group,
                    tuple(members),
                )
            )
            taken.update(m.host for m in members)
        # 2. hosts left that degrade together within a label group
        by_group: dict[tuple[tuple[str, str], ...], list[Sighting]] = {}
        for s in found:
            lg = lgs[s.host]
            if s.host not in taken and lg and s.series:
                by_group.setdefault(lg, []).append(s)
        for lg, everyone in by_group.items():
            key = "correlated|" + ",".join(f"{k}={v}" for k, v in lg)
            # Slices of max_group, the most recent first: the cost stays k * max_group.
            for end in range(len(everyone), 0, -self.s.max_group):
                members = everyone[max(0, end - self.s.max_group) : end]
                if len(members) >= self.s.min_hosts:
                    out.extend(self._correlated(members, key, dict(lg)))
        return out

    def _correlated(self, members: list[Sighting], key: str, group: dict[str, str]) -> list[FleetGroup]:
        r, pairs = correlation_matrix(members, self.s.window_s)
        linked = (r >= self.s.pearson) & pairs
        np.fill_diagonal(linked, False)
        lab = components(linked)
        out = []
        for root in np.unique(lab):
            idx = np.nonzero(lab == root)[0]
            if len(idx) < self.s.min_hosts:
                continue
            ms = tuple(members[i] for i in idx)
            fam = Counter(m.family for m in ms).most_common(1)[0][0]
            # The strongest links, without listing every pair of a large component.
            sub = np.where(np.triu(linked[np.ix_(idx, idx)], k=1), r[np.ix_(idx, idx)], -np.inf).ravel()
            top = min(MEMBERS_LISTED, int(np.isfinite(sub).sum()))
            best = np.argpartition(-sub, top - 1)[:top] if top else np.array([], dtype=int)
            best = best[np.argsort(-sub[best])]
            edges = tuple(
                (members[idx[n // len(idx)]].host, members[idx[n % len(idx)]].host, round(float(sub[n]), 3))
                for n in best
            )
            out.append(FleetGroup(key, "correlated", fam, None, group, ms, edges))
        return out


def _common(members: Sequence[Sighting], keys: Sequence[str]) -> dict[str, str]:
    """The group labels every member shares (a service's hosts may span zones)."""
    out: dict[str, str] = {}
    for k in keys:
        values = {m.labels.get(k) for m in members}
        v = values.pop() if len(values) == 1 else None
        if v is not None:
            out[k] = v
    return out


_SIGHTING = msgspec.json.Decoder(Sighting)
_ENC = msgspec.json.Encoder()


class SharedSightings:
    """Sightings through the store (``fleet_sightings``, one row per host), for replicas that
    share the fleet: each writes its own hosts' as it makes them; the coordinator reads the
    window's. Bounded: a host's row is replaced, rows older than the window are deleted as
    the coordinator reads, and a read takes at most the correlator's ``max_hosts``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.writes = 0
        self.errors = 0

    def put(self, s: Sighting) -> None:
        body = _ENC.encode(replace(s, bins=None)).decode()
        try:
            sightings.put(self.engine, host=s.host, run_id=s.run_id, at=s.at, body=body)
            self.writes += 1
        except SQLAlchemyError:  # the correlator misses one sighting; the next one comes
            self.errors += 1
            log.warning("a fleet sighting of %s could not be stored", s.host, exc_info=True)

    def forget(self, host: str, run_id: str) -> None:
        try:
            sightings.forget(self.engine, host=host, run_id=run_id)
        except SQLAlchemyError:
            self.errors += 1

    def load(self, since: float, limit: int) -> list[Sighting]:
        out = []
        for body in sightings.window(self.engine, since=since, limit=limit):
            try:
                out.append(_SIGHTING.decode(body))
            except msgspec.DecodeError:  # not JSON, or not a sighting: skipped, counted
                self.errors += 1
        return out


def blast_radius(group: FleetGroup, known: Callable[[dict[str, str]], tuple[int, int]]) -> dict[str, Any]:
    """How far the fault reaches: hosts, services, zones, and the share of the hosts known in
    its cluster (``known(labels)`` answers (hosts in that cluster, hosts known at all))."""
    hosts = group.hosts
    zones = sorted({z for m in group.members if (z := m.labels.get("zone"))})
    clusters = sorted({c for m in group.members if (c := m.labels.get("cluster"))})
    services = sorted({s for m in group.members if (s := m.service)})
    in_cluster, total = known({"cluster": clusters[0]} if len(clusters) == 1 else {})
    out: dict[str, Any] = {
        "hosts": len(hosts),
        "host_ids": hosts[:MEMBERS_LISTED],
        "services": services[:MEMBERS_LISTED],
        "zones": zones[:MEMBERS_LISTED],
        "clusters": clusters[:MEMBERS_LISTED],
        "families": dict(Counter(m.family for m in group.members).most_common()),
        "known_hosts": total,
        "share_of_known": round(len(hosts) / total, 4) if total else None,
    }
    if len(clusters) == 1:
        out["cluster_hosts"] = in_cluster
        out["cluster_share"] = round(len(hosts) / in_cluster, 4) if in_cluster else None
    return out


def fleet_evidence(group: FleetGroup, radius: dict[str, Any], now: float) -> Evidence:
    """What a fleet run's stages read: the members and the tail of each one's signal."""
    members = sorted(group.members, key=lambda m: m.host)
    series: dict[str, list[tuple[float, float]]] = {}
    for m in members[:SERIES_MEMBERS]:
        if m.series and m.signal:
            series[f"{m.signal}@{m.host}"] = list(m.series)
    times = [t for m in members for t, _ in m.series[-1:]] + [t for m in members for t, _ in m.series[:1]]
    start, end = (min(times), max(times)) if times else (now, now)
    table = {
        "key": group.key,
        "method": group.method,
        "family": group.family,
        "service": group.service,
        "group": group.group,
        "blast_radius": radius,
        "members": [
            {
                "host_id": m.host,
                "run_id": m.run_id,
                "family": m.family,
                "service": m.service,
                "confidence": m.confidence,
                "signal": m.signal,
                "fault_started_at": m.started,
                "culprit": m.culprit,
                "labels": m.labels,
            }
            for m in members[:MEMBERS_LISTED]
        ],
        "correlation": [list(e) for e in group.correlation[:MEMBERS_LISTED]],
    }
    return Evidence(
        host_id=FLEET_HOST,
        start=start,
        end=end,
        samples=sum(len(m.series) for m in members),
        series=series,
        tables={"fleet": table},
        freshness={"fleet": "fresh"},  # the members' own freshness is in their runs
        sources_seen=["fleet"],
        labels=dict(group.group),
    )


def fleet_culprit(group: FleetGroup, radius: dict[str, Any]) -> dict[str, Any]:
    where = ",".join(f"{k}={v}" for k, v in group.group.items()) or "fleet"
    kind = "service" if group.service else "label_group"
    return {
        "kind": kind,
        "id": group.service or where,
        "service": group.service,
        "group": group.group,
        "method": group.method,
        "hosts": radius["hosts"],
        "host_ids": radius["host_ids"][:MEMBERS_LISTED],
    }
