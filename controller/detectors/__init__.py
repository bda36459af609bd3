"""Anomaly detectors, one family each, found through one registry (controller.detectors.base).

Importing this package registers them all."""

from __future__ import annotations

from controller.detectors import general, gpu, host, network, telemetry  # noqa: F401 - registration
from controller.detectors.base import DETECTORS, Culprit, Finding, get_detector
from controller.detectors.evidence import Evidence, build_evidence

# The registered families and the general ones, which read the others' findings.
FAMILIES = tuple(sorted({*DETECTORS, *general.GENERAL_FAMILIES}))

__all__ = ["DETECTORS", "FAMILIES", "Culprit", "Evidence", "Finding", "build_evidence", "get_detector"]
