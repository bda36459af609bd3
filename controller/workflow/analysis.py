"""Pure analysis: run every detector over evidence and rank the findings into hypotheses.

Confidence is a detector's score capped by what the telemetry can support: with any
source stale or missing it cannot pass STALE_CAP, and it scales with coverage (the
share of the sources that answered fresh). The stale-telemetry finding itself is
not capped: it is about exactly that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from controller.detectors import DETECTORS, Evidence, Finding

STALE_CAP = 0.6
TOP_HYPOTHESES = 5


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

    def to_dict(self) -> dict[str, Any]:
        return {
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
        }


def fingerprint(host_id: str, family: str, culprit_kind: str, culprit_id: str) -> str:
    """The incident's shape: host, anomaly family and culprit."""
    return hashlib.sha256(f"{host_id}|{family}|{culprit_kind}|{culprit_id}".encode()).hexdigest()[:24]


def coverage(ev: Evidence) -> float:
    expected = ev.expected()
    if not expected:
        return 0.0
    return sum(1 for s in expected.values() if s == "fresh") / len(expected)


def detect(ev: Evidence) -> list[Finding]:
    out: list[Finding] = []
    for family in sorted(DETECTORS):
        out.extend(DETECTORS[family](ev))
    return out


def rank(ev: Evidence, findings: list[Finding]) -> list[Hypothesis]:
    cov = coverage(ev)
    stale = bool(ev.not_fresh())
    scored = []
    for f in findings:
        conf = f.score
        if f.family != "stale_telemetry":
            conf *= 0.5 + 0.5 * cov
            if stale:
                conf = min(conf, STALE_CAP)
        scored.append((round(conf, 4), f))
    scored.sort(key=lambda cf: (-cf[0], cf[1].family, cf[1].culprit.id))
    out = []
    for i, (conf, f) in enumerate(scored[:TOP_HYPOTHESES], start=1):
        out.append(
            Hypothesis(
                rank=i,
                family=f.family,
                confidence=conf,
                culprit={"kind": f.culprit.kind, "id": f.culprit.id, **f.culprit.detail},
                summary=f.summary,
                method=f.method,
                supporting=f.supporting,
                contradicting=f.contradicting,
                expected_signals=f.expected,
                fingerprint=fingerprint(ev.host_id, f.family, f.culprit.kind, f.culprit.id),
            )
        )
    return out
