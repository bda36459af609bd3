"""Stale telemetry: sources that stopped answering. Also caps every other finding's
confidence (the analyzer reads the same freshness)."""

from __future__ import annotations

from controller.detectors.base import Culprit, Finding, Params, detector
from controller.detectors.evidence import Evidence


@detector("stale_telemetry")
def stale_telemetry(ev: Evidence, p: Params) -> list[Finding]:
    bad = ev.not_fresh()
    if not bad:
        return []
    missing = sorted(n for n, s in bad.items() if s == "missing")
    fresh = len(ev.expected()) - len(bad)
    # Most sources still answering: the collector is up, one source is in trouble.
    against = [f"{fresh} other sources fresh: the collector itself answers"] if fresh > len(bad) else []
    return [
        Finding(
            family="stale_telemetry",
            method="threshold",
            signal="freshness",
            value=float(len(bad)),
            baseline=None,
            threshold=1.0,
            score=(0.5 + 0.1 * min(len(bad), 4) + (0.1 if missing else 0.0)) * (0.9 if against else 1.0),
            culprit=Culprit("source", ",".join(sorted(bad)), {"states": bad}),
            summary="telemetry not fresh: " + ", ".join(f"{n} {s}" for n, s in sorted(bad.items())),
            supporting=["freshness"],
            contradicting=against,
            expected=["the collector's agent health showing source errors", "gaps in ingest"],
        )
    ]
