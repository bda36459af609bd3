"""The incidentlab.artifact/v1 contract: eight kinds, one per workflow stage, in order.

Every artifact carries the envelope DESIGN.md lists; ``payload`` is compact and
kind-specific, capped per kind so a whole chain stays under 64 KiB. ``sha256`` is
taken over the canonical JSON (keys sorted, no whitespace) of the artifact with
``sha256`` itself empty, so anyone can recompute it. Raw telemetry never travels in
an artifact: ``evidence_refs`` point at it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from controller.errors import ControllerError

SCHEMA_VERSION = "incidentlab.artifact/v1"
KINDS = (
    "observation_summary",
    "anomaly_finding",
    "root_cause_hypothesis",
    "remediation_proposal",
    "execution_plan",
    "execution_result",
    "verification_result",
    "incident_report",
)
PRODUCERS = {
    "observation_summary": "observer",
    "anomaly_finding": "analyzer",
    "root_cause_hypothesis": "analyzer",
    "remediation_proposal": "planner",
    "execution_plan": "policy_gate",
    "execution_result": "executor",
    "verification_result": "verifier",
    "incident_report": "memory",
}
CONSUMERS = {
    "observation_summary": "analyzer",
    "anomaly_finding": "analyzer",
    "root_cause_hypothesis": "planner",
    "remediation_proposal": "policy_gate",
    "execution_plan": "executor",
    "execution_result": "verifier",
    "verification_result": "memory",
    "incident_report": "operator",
}
# Bytes of canonical payload per kind; together with the envelopes a chain stays under 64 KiB.
PAYLOAD_CAPS = {
    "observation_summary": 11 * 1024,
    "anomaly_finding": 8 * 1024,
    "root_cause_hypothesis": 10 * 1024,
    "remediation_proposal": 6 * 1024,
    "execution_plan": 6 * 1024,
    "execution_result": 7 * 1024,
    "verification_result": 3 * 1024,
    "incident_report": 6 * 1024,
}
CHAIN_CAP = 64 * 1024
Status = Literal["ok", "degraded", "skipped", "blocked", "failed"]


class ArtifactError(ControllerError):
    """An artifact that breaks the contract (a size cap, a broken chain, a wrong hash)."""


class ArtifactTampered(ArtifactError):
    """A stored artifact whose content no longer hashes to what was committed for it."""

    def __init__(self, run_id: str, kind: str, key: str, why: str) -> None:
        super().__init__(f"run {run_id}: the stored {kind} ({key}) {why}")
        self.run_id = run_id
        self.kind = kind


class EvidenceRef(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    evidence_id: str
    kind: str  # "window" (snapshots), "events", "process", "cgroup", "socket", "device"
    host_id: str
    start: float
    end: float
    uri: str  # evidence/<run_id>/package.json#<evidence_id>


class Replay(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    replayable: bool
    replay_of: str | None
    deterministic: bool
    code_version: str


class Uncertainty(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    freshness: str  # fresh, stale, missing or mixed
    coverage: float  # share of expected sources that answered
    notes: list[str] = []


class Artifact(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    schema_version: str
    artifact_id: str
    kind: str
    stage_index: int
    producer: str
    consumer: str
    workflow_id: str
    incident_id: str
    correlation_id: str
    created_at: float
    started_at: float
    finished_at: float
    status: Status
    input_artifact_ids: list[str]
    evidence_refs: list[EvidenceRef]
    raw_refs: list[str]
    replay: Replay
    uncertainty: Uncertainty
    payload: dict[str, Any]
    sha256: str = ""


_CANON = msgspec.json.Encoder(order="sorted")
_DECODE = msgspec.json.Decoder(Artifact)
MAX_RAW_REFS = 8
MAX_EVIDENCE_REFS = 24


def canonical(obj: Any) -> bytes:
    return _CANON.encode(obj)


def digest(artifact: Artifact) -> str:
    return hashlib.sha256(canonical(msgspec.structs.replace(artifact, sha256=""))).hexdigest()


def artifact_id(workflow_id: str, kind: str, salt: str = "") -> str:
    """Deterministic: the same workflow, kind and salt give the same id (replays stay comparable)."""
    return "art-" + hashlib.sha256(f"{workflow_id}|{kind}|{salt}".encode()).hexdigest()[:20]


def build(
    *,
    kind: str,
    workflow_id: str,
    incident_id: str,
    correlation_id: str,
    started_at: float,
    finished_at: float,
    status: Status,
    inputs: list[str],
    evidence_refs: list[EvidenceRef],
    raw_refs: list[str],
    replay: Replay,
    uncertainty: Uncertainty,
    payload: dict[str, Any],
    id_salt: str = "",
) -> Artifact:
    if kind not in KINDS:
        raise ArtifactError(f"unknown artifact kind {kind!r}")
    size = len(canonical(payload))
    if size > PAYLOAD_CAPS[kind]:
        raise ArtifactError(f"{kind} payload is {size} bytes, over its cap of {PAYLOAD_CAPS[kind]}")
    if len(evidence_refs) > MAX_EVIDENCE_REFS or len(raw_refs) > MAX_RAW_REFS:
        raise ArtifactError(
            f"{kind}: too many references ({len(evidence_refs)} evidence, {len(raw_refs)} raw)"
        )
    art = Artifact(
        schema_version=SCHEMA_VERSION,
        artifact_id=artifact_id(workflow_id, kind, id_salt),
        kind=kind,
        stage_index=KINDS.index(kind),
        producer=PRODUCERS[kind],
        consumer=CONSUMERS[kind],
        workflow_id=workflow_id,
        incident_id=incident_id,
        correlation_id=correlation_id,
        created_at=finished_at,
        started_at=started_at,
        finished_at=finished_at,
        status=status,
        input_artifact_ids=inputs,
        evidence_refs=evidence_refs,
        raw_refs=raw_refs,
        replay=replay,
        uncertainty=uncertainty,
        payload=payload,
    )
    return msgspec.structs.replace(art, sha256=digest(art))


def encode(art: Artifact) -> bytes:
    return canonical(art)


def decode(raw: bytes) -> Artifact:
    try:
        return _DECODE.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ArtifactError(f"not an {SCHEMA_VERSION} artifact: {exc}") from exc


def verify_chain(chain: list[Artifact]) -> list[str]:
    """Problems with a chain: order, hashes, input links, ids, size. Empty when it is valid."""
    problems = []
    seen: dict[str, Artifact] = {}
    total = 0
    for i, art in enumerate(chain):
        total += len(encode(art))
        if art.stage_index != i or art.kind != KINDS[i]:
            problems.append(f"position {i}: {art.kind} (stage {art.stage_index}) is out of order")
        if digest(art) != art.sha256:
            problems.append(f"{art.kind}: sha256 does not match its content")
        for ref in art.input_artifact_ids:
            if ref not in seen:
                problems.append(f"{art.kind}: input {ref} is not an earlier artifact of the chain")
        if i > 0 and chain[i - 1].artifact_id not in art.input_artifact_ids:
            problems.append(f"{art.kind}: does not name its predecessor {chain[i - 1].artifact_id}")
        if art.workflow_id != chain[0].workflow_id:
            problems.append(f"{art.kind}: belongs to another workflow")
        seen[art.artifact_id] = art
    if total > CHAIN_CAP:
        problems.append(f"chain is {total} bytes, over {CHAIN_CAP}")
    return problems


def manifest(chain: list[Artifact]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "workflow_id": chain[0].workflow_id if chain else None,
        "artifacts": [
            {
                "stage_index": a.stage_index,
                "kind": a.kind,
                "artifact_id": a.artifact_id,
                "sha256": a.sha256,
                "status": a.status,
            }
            for a in chain
        ],
        "chain_sha256": hashlib.sha256("".join(a.sha256 for a in chain).encode()).hexdigest(),
        "bytes": sum(len(encode(a)) for a in chain),
    }
