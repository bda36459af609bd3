"""Findings, culprits, the detector registry, and the statistics detectors share.

Methods: static thresholds; a robust z-score (median and MAD of the window before
the latest points); a seasonal baseline (the same phase in earlier periods); and
correlation across signals (Pearson). A detector returns findings with a score in
[0, 1]; the analyzer turns the best ones into hypotheses.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from controller.detectors.evidence import Evidence, robust_baseline
from controller.errors import ControllerError


@dataclass(frozen=True)
class Culprit:
    """What owns a fault (kinds: pod, container, unit, cgroup, process_tree, process, socket,
    device, interface, source, host). ``id`` is what an operator reads; ``key`` names only
    the owner (no worker pid), and the fingerprint is built from it."""

    kind: str
    id: str
    detail: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    @property
    def identity(self) -> str:
        return self.key or self.id


@dataclass
class Finding:
    family: str
    method: str
    signal: str
    value: float
    baseline: float | None
    threshold: float | None
    score: float
    culprit: Culprit
    summary: str
    supporting: list[str] = field(default_factory=list)
    contradicting: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)
    # The newest sample time that still shows the fault; None: the window's newest (detectors
    # that look only at the latest samples fire only while it lasts).
    last_active: float | None = None
    pending: bool = False  # has not held for its rule's ``for`` yet (set by the analysis)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["value"] = round(self.value, 4)
        d["score"] = round(self.score, 4)
        if self.baseline is not None:
            d["baseline"] = round(self.baseline, 4)
        if not self.pending:
            del d["pending"]
        return d


# A family's tunables (thresholds, hold times), by name: its defaults, or a rules file's
# values for the host (controller/detectors/rules.py).
Params = Mapping[str, float]
RawDetector = Callable[[Evidence, Params], list[Finding]]


class Detector:
    """A family's detector: called with evidence and, optionally, its tunables."""

    def __init__(self, family: str, fn: RawDetector, defaults: dict[str, float]) -> None:
        self.family = family
        self.fn = fn
        self.defaults = defaults

    def __call__(self, ev: Evidence, p: Params | None = None) -> list[Finding]:
        return self.fn(ev, self.defaults if p is None else p)


DETECTORS: dict[str, Detector] = {}


class UnknownDetectorError(ControllerError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")


def detector(family: str, **tunables: float) -> Callable[[RawDetector], Detector]:
    """Register a family's detector with the tunables a rules file may set, at their defaults."""

    def register(fn: RawDetector) -> Detector:
        if family in DETECTORS:
            raise ValueError(f"detector {family!r} registered twice")
        DETECTORS[family] = Detector(family, fn, {k: float(v) for k, v in tunables.items()})
        return DETECTORS[family]

    return register


def get_detector(family: str) -> Detector:
    try:
        return DETECTORS[family]
    except KeyError:
        raise UnknownDetectorError(family) from None


def robust_z(values: Sequence[float], tail: int = 3) -> tuple[float, float] | None:
    """(z, baseline median) of the mean of the last `tail` points against the rest."""
    if len(values) < tail + 8:
        return None
    base, last = robust_baseline(values[:-tail]), list(values[-tail:])
    if base is None:
        return None
    med, mad = base.median, base.mad
    # 1.4826 makes the MAD a standard deviation for normal data; the floor keeps a flat
    # baseline from turning any blip into an infinite z.
    scale = max(1.4826 * mad, 0.05 * abs(med), 1e-6)
    return (sum(last) / len(last) - med) / scale, med


def seasonal_baseline(
    points: Sequence[tuple[float, float]], period_s: float, tolerance_s: float
) -> float | None:
    """The median of the values one, two, ... periods before the latest point (same phase)."""
    if not points:
        return None
    t_last = points[-1][0]
    times = [t for t, _ in points]  # in time order: each phase's points found by bisection
    same_phase = []
    k = 1
    while t_last - k * period_s >= points[0][0] - tolerance_s:
        target = t_last - k * period_s
        a = bisect.bisect_left(times, target - tolerance_s)
        b = bisect.bisect_right(times, target + tolerance_s)
        if a < b:
            same_phase.append(statistics.median(v for _, v in points[a:b]))
        k += 1
    return statistics.median(same_phase) if len(same_phase) >= 2 else None


def pearson(a: Sequence[float], b: Sequence[float]) -> float | None:
    n = min(len(a), len(b))
    if n < 8:
        return None
    x, y = list(a[-n:]), list(b[-n:])
    mx, my = sum(x) / n, sum(y) / n
    sx = math.sqrt(sum((v - mx) ** 2 for v in x))
    sy = math.sqrt(sum((v - my) ** 2 for v in y))
    if sx == 0 or sy == 0:
        return None
    return sum((p - mx) * (q - my) for p, q in zip(x, y, strict=True)) / (sx * sy)


def clamp(x: float) -> float:
    return max(0.0, min(1.0, x))


AGAINST_FACTOR = 0.8  # what each check against a finding that holds takes off its score


def weigh(score: float, against: Sequence[str]) -> float:
    """A score lowered by the evidence against the finding (each check that holds)."""
    return score * AGAINST_FACTOR ** len(against)


def process_culprit(row: dict[str, Any] | None, reason: str) -> Culprit:
    if not row:
        return Culprit("host", "host", {"reason": reason})
    if row.get("pod_uid"):
        return Culprit(
            "pod",
            str(row["pod_uid"]),
            {"pid": row.get("pid"), "comm": row.get("comm"), "container_id": row.get("container_id")},
            key=f"pod:{row['pod_uid']}",
        )
    # Keyed by program and cgroup, not pid: the same program restarted is the same culprit.
    return Culprit(
        "process",
        f"{row.get('comm')}[{row.get('pid')}]",
        {"pid": row.get("pid"), "comm": row.get("comm"), "cgroup": row.get("cgroup")},
        key=f"process:{row.get('comm')}@{row.get('cgroup')}",
    )


def top_row(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    best = [r for r in rows if isinstance(r.get(key), int | float)]
    return max(best, key=lambda r: r[key]) if best else None
