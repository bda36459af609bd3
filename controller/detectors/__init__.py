"""Anomaly detectors, one family each, found through one registry (controller.detectors.base).

Importing this package registers them all."""

from __future__ import annotations

from controller.detectors import gpu, host, network, telemetry  # noqa: F401 - registration
from controller.detectors.base import DETECTORS, Culprit, Finding, get_detector
from controller.detectors.evidence import Evidence, build_evidence

FAMILIES = tuple(sorted(DETECTORS))

__all__ = ["DETECTORS", "FAMILIES", "Culprit", "Evidence", "Finding", "build_evidence", "get_detector"]
