"""Pure analysis: run every detector over evidence and rank the findings into hypotheses.

Confidence is a detector's score capped by what the telemetry can support: with any
source stale or missing it cannot pass STALE_CAP, and it scales with coverage (the
share of the sources that answered fresh). The stale-telemetry finding itself is
not capped: it is about exactly that.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from controller.detectors import DETECTORS, Evidence, Finding
from controller.detectors.explains import explain, root_of, symptom_record
from controller.detectors.expr import alert_finding
from controller.detectors.general import general
from controller.detectors.owners import service_of
from controller.detectors.rules import DEFAULT_HOST_RULES, HostRules
from controller.detectors.severity import severity

STALE_CAP = 0.6
TOP_HYPOTHESES = 5
# A finding is active while its newest supporting sample is this recent (in collection
# intervals, and never under ACTIVE_MIN_S); past that it is recovering, and its confidence
# halves every DECAY_HALF_LIFE_S: a fault that ended no longer ranks as if it were live.
ACTIVE_INTERVALS = 3
ACTIVE_MIN_S = 15.0
DECAY_HALF_LIFE_S = 30.0


@dataclass(frozen=True)
class Hypothesis:
    rank: int
    family: str
    confidence: float
    culprit: dict[str, Any]
    summary: str
    method: str
    supporting: list[str]
    contradicting: list[str]
    expected_signals: list[str]
    fingerprint: str
    # Findings this one explains (they open no run of their own), and, on a symptom, its cause.
    symptoms: tuple[dict[str, Any], ...] = ()
    explained_by: dict[str, Any] | None = None
    signal: str = ""  # the signal the finding turned on, and its threshold (when it has one)
    threshold: float | None = None
    # "recovering": its signal has not shown the fault for a while; "pending": not yet held
    # for its rule's ``for``. Only an active one opens or keeps a run.
    state: str = "active"
    last_active: float | None = None  # the newest sample that showed it
    age_s: float = 0.0  # how long ago that sample was, at the window's newest
    # How much it hurts (who waits or fails), apart from how sure the cause is.
    severity: dict[str, Any] | None = None
    labels: dict[str, str] = field(default_factory=dict)  # from the rules file
    runbook_url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "rank": self.rank,
            "family": self.family,
            "confidence": self.confidence,
            "culprit": self.culprit,
            "summary": self.summary,
            "method": self.method,
            "supporting": self.supporting,
            "contradicting": self.contradicting,
            "expected_signals": self.expected_signals,
            "fingerprint": self.fingerprint,
            "signal": self.signal,
            "state": self.state,
            "last_active": self.last_active,
            "age_s": self.age_s,
            "severity": self.severity,
        }
        if self.symptoms:
            out["symptoms"] = list(self.symptoms)
        if self.explained_by is not None:
            out["explained_by"] = self.explained_by
        if self.labels:
            out["labels"] = self.labels
        if self.runbook_url:
            out["runbook_url"] = self.runbook_url
        return out


def fingerprint(host_id: str, family: str, culprit_kind: str, culprit_id: str) -> str:
    """The incident's shape: host, anomaly family and culprit (its owner's key, not a worker pid)."""
    return hashlib.sha256(f"{host_id}|{family}|{culprit_kind}|{culprit_id}".encode()).hexdigest()[:24]


def coverage(ev: Evidence) -> float:
    expected = ev.expected()
    if not expected:
        return 0.0
    return sum(1 for s in expected.values() if s == "fresh") / len(expected)


def detect(ev: Evidence, rules: HostRules = DEFAULT_HOST_RULES) -> list[Finding]:
    """Every family's findings, then the general detectors' for what they leave uncovered,
    under the host's rules: tunables, families turned off, and each family's ``for`` (a
    finding that has not held that long is pending: shown, opening nothing)."""
    out: list[Finding] = []
    for family in sorted(DETECTORS):
        if family not in rules.disabled:
            out.extend(DETECTORS[family](ev, rules.params.get(family)))
    for alert, node in rules.alerts:
        fired = alert_finding(ev, alert.alert, alert.expr, node, alert.confidence, alert.summary)
        if fired is not None:
            out.append(fired)
    out.extend(f for f in general(ev, out, rules.general) if f.family not in rules.disabled)
    if rules.hold_s:
        for f in out:
            hold = rules.hold_s.get(f.family)
            if hold and held_for(ev, f) < hold:
                f.pending = True
    return out


def held_for(ev: Evidence, f: Finding) -> float:
    """How long the finding has held: since its onset when it names one (an anomaly, an
    alert), else as long as its signal has stayed on the side of its threshold it is on
    now; a finding with neither has held as long as it is seen."""
    since = f.culprit.detail.get("since")
    if isinstance(since, int | float):
        return ev.end - float(since)
    points = (ev.series.get(f.signal) or []) if f.signal and f.threshold is not None else []
    if not points or f.threshold is None:
        return math.inf
    above = points[-1][1] >= f.threshold
    start = points[-1][0]
    for t, v in reversed(points):
        if (v >= f.threshold) != above:
            break
        start = t
    return ev.end - start


def rank(ev: Evidence, findings: list[Finding], rules: HostRules = DEFAULT_HOST_RULES) -> list[Hypothesis]:
    """Hypotheses, best first. A symptom (a finding another explains, controller/detectors/
    explains.py) cannot outrank its cause: its confidence as a root cause is capped at its
    cause's, it sorts after it, and it rides on the cause's hypothesis as a symptom."""
    cov = coverage(ev)
    stale = bool(ev.not_fresh())
    grace = max(ACTIVE_INTERVALS * ev.interval(), ACTIVE_MIN_S)
    conf, ages = [], []
    for f in findings:
        c = f.score
        if f.family != "stale_telemetry":
            c *= 0.5 + 0.5 * cov
            if stale:
                c = min(c, STALE_CAP)
        age = max(0.0, ev.end - f.last_active) if f.last_active is not None else 0.0
        if age > grace:
            c *= 0.5 ** ((age - grace) / DECAY_HALF_LIFE_S)
        conf.append(round(c, 4))
        ages.append((round(age, 3), age > grace))
    # A cause that has stopped showing explains nothing still live: it would hide it.
    explained = explain(findings, conf, live=[not recovering for _, recovering in ages])
    fps = [fingerprint(ev.host_id, f.family, f.culprit.kind, f.culprit.identity) for f in findings]
    roots = {i: root_of(i, explained) for i in explained}
    capped = [min(c, conf[roots[i]]) if i in roots else c for i, c in enumerate(conf)]
    symptoms: dict[int, list[dict[str, Any]]] = {}
    for i, why in sorted(explained.items(), key=lambda ix: -conf[ix[0]]):
        symptoms.setdefault(why.cause, []).append(symptom_record(findings[i], conf[i], why.edge, fps[i]))
    order = sorted(
        range(len(findings)),
        key=lambda i: (-capped[i], i in explained, findings[i].family, str(findings[i].culprit.id)),
    )
    out = []
    for n, i in enumerate(order[:TOP_HYPOTHESES], start=1):
        f = findings[i]
        x = explained.get(i)
        out.append(
            Hypothesis(
                rank=n,
                family=f.family,
                confidence=capped[i],
                culprit=_culprit(f),
                summary=f.summary,
                method=f.method,
                # A signal a symptom showed supports the cause only through that symptom: named there.
                supporting=f.supporting,
                contradicting=f.contradicting,
                expected_signals=f.expected,
                fingerprint=fps[i],
                symptoms=tuple(symptoms.get(i, ())),
                explained_by=None
                if x is None
                else {
                    "family": findings[x.cause].family,
                    "fingerprint": fps[x.cause],
                    "why": x.edge.why,
                },
                signal=f.signal,
                threshold=f.threshold,
                state="recovering" if ages[i][1] else "pending" if f.pending else "active",
                labels=rules.labels.get(f.family, {}),
                runbook_url=rules.runbook_url.get(f.family),
                severity=severity(ev, f).to_dict(),
                last_active=f.last_active if f.last_active is not None else ev.end,
                age_s=ages[i][0],
            )
        )
    return out


def _culprit(f: Finding) -> dict[str, Any]:
    out = {"kind": f.culprit.kind, "id": f.culprit.id, **f.culprit.detail}
    service = service_of(f.culprit.kind, f.culprit.id, f.culprit.detail)
    if service is not None:
        out["service"] = service
    return out


def top_firing(hyps: list[Hypothesis], threshold: float) -> Hypothesis | None:
    """The best hypothesis that is live, past the threshold and no symptom: what opens or
    keeps a run (a fault that ended may still rank above it while it decays)."""
    return next(
        (h for h in hyps if h.state == "active" and h.explained_by is None and h.confidence >= threshold),
        None,
    )


def fires(hyps: list[Hypothesis], threshold: float) -> bool:
    return top_firing(hyps, threshold) is not None


def firing(hyps: list[Hypothesis], threshold: float) -> set[str]:
    """What is live now: the fingerprints of active hypotheses past the threshold and of the
    symptoms they explain (a run opened for a symptom stays alive while its cause is), and
    their families as ``family:<name>`` (a live run stays live while its family fires on the
    host, whichever member or process is on top as the fault tails off)."""
    out: set[str] = set()
    for h in hyps:
        if h.state == "active" and h.confidence >= threshold:
            out.add(h.fingerprint)
            out.add(f"family:{h.family}")
            for s in h.symptoms:
                out.add(s["fingerprint"])
                out.add(f"family:{s['family']}")
    return out


def onset(ev: Evidence, h: Hypothesis) -> float:
    """When the fault began, as far as the window shows: the first sample of the trailing
    stretch in which the hypothesis' signal stayed at or past its threshold; when it is not
    past it now (the finding fired on something else), its last active sample."""
    points = (ev.series.get(h.signal) or []) if h.signal else []
    fallback = h.last_active if h.last_active is not None else ev.end
    if not points or h.threshold is None or points[-1][1] < h.threshold:
        return fallback  # not fired on this signal's level (PSI, kills, a low reading): no stretch to date
    start = points[-1][0]
    for t, v in reversed(points):
        if v < h.threshold:
            break
        start = t
    return start
