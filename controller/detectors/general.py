"""General detectors, for what no family rule covers.

- ``anomaly``: a signal whose newest points all lie past ``z`` robust standard deviations
  (1.4826 MAD, floored by the signal's unit) of its baseline, and not where a recurring
  pattern puts it (the same phase in earlier periods: a seasonal baseline). The baseline
  is the signal's points in a stretch of the window that ends at the last whole step of
  the host's clock: it stays put between steps, so a window keeps it instead of sorting
  every signal on every evaluation (controller/detectors/window.py), and a fault that
  began after the step is not in it. A new level held for most of the stretch becomes
  the baseline: an anomaly is a change, not a level.
- ``host_instability``: more than ``max_concurrent`` signals anomalous at once.
- ``multi_resource_saturation``: two or more of CPU, memory, IO and the network near
  their limits together, each below what its own family fires on.
- ``network_throughput`` (a family detector, registered): the busiest real interface
  past ``bytes_per_s`` (200 MB/s) for ``hold_s`` (30 s).

A signal a family finding already names (its signal or a supporting one) is that
family's to report: no anomaly is made of it. A known family's live finding at least
as strong explains the anomalies and the instability beside it (controller/detectors/
explains.py): one fault, one run, its side effects attached.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass, field

from controller.detectors.base import Culprit, Finding, Params, clamp, detector, seasonal_baseline, weigh
from controller.detectors.evidence import Baseline, Evidence
from controller.detectors.host import PSI_NOBODY_WAITS

GENERAL_FAMILIES = ("anomaly", "host_instability", "multi_resource_saturation")
MAD_TO_SIGMA = 1.4826  # makes a MAD a standard deviation for normal data


@dataclass(frozen=True)
class GeneralRules:
    z: float = 2.5  # robust z past which a signal is anomalous
    z_full: float = 6.0  # robust z at which an anomaly's score tops out
    # An anomaly alone stays below the default open threshold (0.5): it shows in the
    # hypotheses, names its signal and onset, and pages only when many move together
    # (host_instability) or an operator raises this in the rules.
    anomaly_max_score: float = 0.45
    for_s: float = 10.0  # how long every point must lie past the band (and at least for_samples)
    for_samples: int = 3
    step_s: float = 60.0  # the baseline's stretch ends at a multiple of this (host clock)
    baseline_s: float = 240.0  # and spans this much before that
    min_baseline: int = 8  # points the baseline needs
    relative_floor: float = 0.05  # of the median: a flat baseline does not make any blip infinite
    # Unit floors of the robust deviation, by name suffix or prefix (first match): a change
    # smaller than a few of these is never an anomaly, however flat the signal was.
    floors: tuple[tuple[str, float], ...] = (
        ("bytes_max_per_s", 1_048_576.0),
        ("psi_", 2.0),
        ("_pct", 2.0),
        ("_ms", 5.0),
        ("_per_s", 2.0),
        ("fds", 64.0),
        ("", 1.0),
    )
    periods_s: tuple[float, ...] = (60.0,)  # seasonal periods tried (each needs two in the window)
    skip: tuple[str, ...] = ("oom_kills",)  # counters a family reads as events, not levels
    max_concurrent: int = 3  # more anomalous signals than this at once: the host is unstable
    # Near-limit levels for multi-resource saturation: (resource, signal, level, above?).
    near_limits: tuple[tuple[str, str, float, bool], ...] = (
        ("cpu", "cpu_busy_pct", 80.0, True),
        ("cpu", "psi_cpu_some", 20.0, True),
        ("memory", "mem_available_pct", 10.0, False),
        ("memory", "psi_memory_some", 10.0, True),
        ("io", "disk_util_max_pct", 80.0, True),
        ("io", "psi_io_some", 15.0, True),
        ("network", "nic_bytes_max_per_s", 200e6, True),
    )
    min_resources: int = 2

    def floor(self, name: str) -> float:
        for pattern, value in self.floors:
            if name.endswith(pattern) or (pattern.endswith("_") and name.startswith(pattern)):
                return value
        return 1e-6


@dataclass(frozen=True)
class _Band:
    """The band a signal's newest point is normal in (hashable: it keys a window's baselines)."""

    rules: GeneralRules

    def __call__(self, name: str, b: Baseline) -> tuple[float, float] | None:
        r = self.rules
        if b.n < r.min_baseline or name in r.skip:
            return None
        return b.median, r.z * scale(r, name, b)


def scale(r: GeneralRules, name: str, b: Baseline) -> float:
    return max(MAD_TO_SIGMA * b.mad, r.relative_floor * abs(b.median), r.floor(name))


@dataclass(frozen=True)
class Anomaly:
    signal: str
    value: float  # the mean of the newest points
    baseline: float
    z: float
    since: float  # the first sample of the trailing stretch past the band
    seasonal: dict[str, float] = field(default_factory=dict)  # period -> its same-phase median
    covered: bool = False  # a family's finding names the signal


def _stretch(end: float, r: GeneralRules) -> tuple[float, float]:
    hi = math.floor(end / r.step_s) * r.step_s
    return hi - r.baseline_s, hi


def anomalies(ev: Evidence, r: GeneralRules, covered: Set[str] = frozenset()) -> list[Anomaly]:
    """Every signal anomalous now, strongest first. A ``covered`` one (a family reports it)
    is counted as it stands: no seasonal check, its onset not looked for."""
    n = held(ev, r.for_s, r.for_samples)
    if ev.samples < r.min_baseline + n:
        return []
    lo, hi = _stretch(ev.end, r)
    out = []
    for name, base, center, width in ev.outliers(lo, hi, _Band(r)):
        tail = ev.tail(name, n)
        side = 1.0 if tail[-1][1] >= center else -1.0
        if len(tail) < n or any(side * (v - center) < width for _, v in tail):
            continue  # not held: a blip
        value = sum(v for _, v in tail) / len(tail)
        sd = scale(r, name, base)
        if name in covered:
            out.append(Anomaly(name, value, center, (value - center) / sd, tail[0][0], covered=True))
            continue
        points = ev.series.get(name) or []
        seasons = {}
        for period in r.periods_s:
            tol = max(1.5 * ev.interval(), 1.0)
            expected = seasonal_baseline(points, period, tol)
            if expected is not None:
                seasons[str(period)] = expected
        if any(abs(value - e) < width for e in seasons.values()):
            continue  # where the same phase of earlier periods was: a recurring pattern
        since = tail[0][0]
        for t, v in reversed(points):
            if side * (v - center) < width:
                break
            since = t
        out.append(Anomaly(name, value, center, (value - center) / sd, since, seasons))
    out.sort(key=lambda a: (-abs(a.z), a.signal))
    return out


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%SZ", time.gmtime(t))


def anomaly_score(z: float, r: GeneralRules) -> float:
    """0.25 at the anomaly line, rising to ``anomaly_max_score`` at ``z_full``."""
    over = min(1.0, (abs(z) - r.z) / max(r.z_full - r.z, 1e-6))
    return clamp(0.25 + (r.anomaly_max_score - 0.25) * max(0.0, over))


def held(ev: Evidence, for_s: float, at_least: int) -> int:
    """The samples a condition must hold for ``for_s`` of the host's clock."""
    return max(at_least, math.ceil(for_s / ev.interval())) if ev.interval() > 0 else at_least


def general(ev: Evidence, findings: Sequence[Finding], r: GeneralRules) -> list[Finding]:
    """The general findings beside the families' ``findings``."""
    out: list[Finding] = []
    covered = {s for f in findings for s in (f.signal, *f.supporting)}
    found = anomalies(ev, r, covered)
    for a in found:
        if a.covered:
            continue
        direction = "above" if a.z > 0 else "below"
        out.append(
            Finding(
                family="anomaly",
                method="robust_z",
                signal=a.signal,
                value=a.value,
                baseline=a.baseline,
                threshold=None,
                score=anomaly_score(a.z, r),
                culprit=Culprit(
                    "signal",
                    a.signal,
                    {"since": a.since, "z": round(a.z, 2), "direction": direction},
                    key=f"signal:{a.signal}",
                ),
                summary=(
                    f"{a.signal} anomalous since {_clock(a.since)}: {a.value:.4g}, {direction} its "
                    f"baseline of {a.baseline:.4g} (robust z {a.z:+.1f})"
                ),
                supporting=[a.signal],
                contradicting=[f"{a.signal} at {a.value:.4g} is only {abs(a.z):.1f} robust deviations out"]
                if abs(a.z) < r.z_full
                else [],
                expected=[a.signal],
            )
        )
    if len(found) > r.max_concurrent:
        names = [a.signal for a in found]
        against = _nobody_waits(ev)
        out.append(
            Finding(
                family="host_instability",
                method="concurrent_anomalies",
                signal=names[0],
                value=float(len(found)),
                baseline=None,
                threshold=float(r.max_concurrent),
                score=weigh(clamp(0.5 + 0.05 * (len(found) - r.max_concurrent - 1)), against),
                culprit=Culprit("host", "host", {"signals": names[:16]}, key="host:instability"),
                summary=f"{len(found)} signals anomalous at once: {', '.join(names[:6])}",
                supporting=names[:16],
                contradicting=against,
                expected=names[:16],
            )
        )
    out.extend(_saturation(ev, r))
    return out


def _nobody_waits(ev: Evidence) -> list[str]:
    """Against a host-wide finding: no task stalls on any resource (PSI some all low)."""
    psi = [ev.recent(f"psi_{res}_some", 3) for res in ("cpu", "memory", "io")]
    known = [x for x in psi if x is not None]
    if known and max(known) < PSI_NOBODY_WAITS:
        return [f"PSI some under {PSI_NOBODY_WAITS:.0f}% for CPU, memory and IO: no task waits"]
    return []


def _saturation(ev: Evidence, r: GeneralRules) -> list[Finding]:
    near: dict[str, str] = {}  # resource -> the first of its signals near the limit
    n = held(ev, r.for_s, r.for_samples)
    for resource, name, level, above in r.near_limits:
        if resource in near:
            continue
        for v in (ev.recent(name, 1), ev.recent(name, n)):  # the newest first: most hosts stop there
            if v is None or (v < level if above else v > level):
                break
        else:
            near[resource] = name
    if len(near) < r.min_resources:
        return []
    resources = sorted(near)
    signals = [near[res] for res in resources]
    against = _nobody_waits(ev)
    return [
        Finding(
            family="multi_resource_saturation",
            method="threshold",
            signal=signals[0],
            value=float(len(resources)),
            baseline=None,
            threshold=float(r.min_resources),
            score=weigh(clamp(0.5 + 0.1 * (len(resources) - r.min_resources)), against),
            culprit=Culprit("host", "host", {"resources": resources}, key="host:saturation"),
            summary=f"{' and '.join(resources)} near their limits together",
            supporting=signals,
            contradicting=against,
            expected=[name for _, name, _, _ in r.near_limits],
        )
    ]


DEFAULT_GENERAL = GeneralRules()


# The seed's sustained-throughput line: 200 MB/s, held 30 s.
@detector("network_throughput", bytes_per_s=200e6, hold_s=30.0)
def network_throughput(ev: Evidence, p: Params) -> list[Finding]:
    line = p["bytes_per_s"]
    latest = ev.recent("nic_bytes_max_per_s", 1)
    if latest is None or latest < line:
        return []
    n = held(ev, p["hold_s"], 3)
    tail = ev.tail("nic_bytes_max_per_s", n)
    if len(tail) < n or any(v < line for _, v in tail):
        return []  # not sustained
    mean = sum(v for _, v in tail) / len(tail)
    busiest, rate = "", 0.0
    for iface in ev.tables.get("interfaces") or []:
        rates = iface.get("rates") if isinstance(iface, dict) else None
        if not isinstance(rates, dict) or iface.get("name") == "lo":
            continue
        for k in ("rx_bytes_per_s", "tx_bytes_per_s"):
            v = rates.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and v > rate:
                busiest, rate = str(iface.get("name")), float(v)
    contradicting = []
    drops = ev.recent("nic_drops_per_s", 3) or 0.0
    backoff = ev.recent("tcp_in_rto_backoff", 3) or 0.0
    if drops == 0 and backoff < 1:
        contradicting.append("no drops and no socket backing off: the link carries it")
    score = clamp(0.5 + 0.2 * min(1.0, mean / line - 1))
    if contradicting:  # a busy link that hurts nobody is worth a look, not a page
        score = min(weigh(score, contradicting), 0.45)
    return [
        Finding(
            family="network_throughput",
            method="threshold",
            signal="nic_bytes_max_per_s",
            value=mean,
            baseline=None,
            threshold=line,
            score=score,
            culprit=Culprit("interface", busiest or "unknown", {}, key=f"interface:{busiest}"),
            summary=(
                f"{busiest or 'an interface'} moving {mean / 1e6:.0f} MB/s for "
                f"{tail[-1][0] - tail[0][0]:.0f} s (line {line / 1e6:.0f} MB/s)"
            ),
            supporting=["nic_bytes_max_per_s"] + (["nic_drops_per_s"] if drops else []),
            contradicting=contradicting,
            expected=["nic_bytes_max_per_s", "nic_drops_per_s", "tcp_in_rto_backoff"],
        )
    ]
