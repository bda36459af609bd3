"""Host topology labels as the controller keeps them: read from each host's CollectorInfo.

A collector checks its labels at start (collector/topology.py); a controller trusts no
collector, so it reads them again here: entries that break the rules (name, value, how
many) are dropped and counted, the rest kept. Nothing else about a batch changes: a bad
label costs that label, never the batch.
"""

from __future__ import annotations

from typing import Any

import msgspec

from collector.topology import LABEL_NAME, MAX_LABELS, MAX_VALUE


class _Info(msgspec.Struct):
    labels: Any = None


_DECODE = msgspec.json.Decoder(_Info)


def clean_labels(found: Any) -> tuple[dict[str, str], int]:
    """(the labels that keep the rules, in name order, at most MAX_LABELS; how many were dropped)."""
    if not isinstance(found, dict):
        return {}, 0 if found is None else 1
    out: dict[str, str] = {}
    dropped = 0
    for k in sorted(found, key=str):
        v = found[k]
        ok = isinstance(k, str) and LABEL_NAME.match(k) and isinstance(v, str) and len(v) <= MAX_VALUE
        if ok and v.isprintable() and len(out) < MAX_LABELS:
            out[k] = v
        else:
            dropped += 1
    return out, dropped


def labels_from_info(raw: bytes) -> tuple[dict[str, str], int]:
    """The labels of a raw CollectorInfo JSON object (see clean_labels)."""
    try:
        info = _DECODE.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}, 1
    return clean_labels(info.labels)
