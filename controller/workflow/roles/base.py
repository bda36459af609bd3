"""The base role and the registry of stages.

A role computes its payload; ``Role.run`` does the rest for every role (papermill's
template method): timing, status, references, the uncertainty it inherits, ids and
the hash. Roles never touch the store: the engine persists what they return.
"""

from __future__ import annotations

import json
import statistics
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import ValidationError

from controller import artifacts
from controller.artifacts import Artifact, EvidenceRef, Replay, Status, Uncertainty
from controller.config import CommandSettings, ExecutionSettings
from controller.detectors import Evidence
from controller.detectors.rules import DEFAULT_HOST_RULES, HostRules
from controller.errors import ControllerError

_X = ExecutionSettings()


@dataclass(frozen=True)
class Posture:
    """What execution may do; the defaults change nothing. Destructive actions are always
    proposal-only and validation always read-only: neither is a setting."""

    dry_run: bool = _X.dry_run
    approval_required: bool = _X.approval_required
    allow_safe_reversible: bool = _X.allow_safe_reversible
    allow_impacting: bool = _X.allow_impacting
    local_hosts: tuple[str, ...] = ()  # hosts whose processes and cgroups this controller reaches
    # Impacting actions with no rollback that may run anyway (approval and allow_impacting
    # still apply): an explicit opt-in, e.g. restart_pod, whose pod its controller replaces.
    allow_without_rollback: tuple[str, ...] = ()
    commands: tuple[CommandSettings, ...] = ()  # the runbook commands run_command may run

    def command(self, name: object) -> CommandSettings | None:
        return next((c for c in self.commands if c.name == name), None)

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dry_run": self.dry_run,
            "approval_required": self.approval_required,
            "allow_safe_reversible": self.allow_safe_reversible,
            "allow_impacting": self.allow_impacting,
            "destructive": "proposal_only",
            "validation": "read_only",
        }
        if self.allow_without_rollback:  # recorded only when set: older plans hash as they did
            out["allow_without_rollback"] = sorted(self.allow_without_rollback)
        if self.commands:  # likewise; an approval binds to the commands as they were listed
            out["commands"] = [c.public() for c in self.commands]
        return out


def recorded_posture(plan: dict[str, Any], host_id: str) -> Posture:
    """The posture an execution_plan was decided under: a replay decides under it too."""
    p = plan.get("posture") or {}
    d = Posture()  # a plan from before a field was recorded: that field's default
    return Posture(
        dry_run=bool(p.get("dry_run", d.dry_run)),
        approval_required=bool(p.get("approval_required", d.approval_required)),
        allow_safe_reversible=bool(p.get("allow_safe_reversible", d.allow_safe_reversible)),
        allow_impacting=bool(p.get("allow_impacting", d.allow_impacting)),
        local_hosts=(host_id,) if p.get("host_reachable") else (),
        allow_without_rollback=tuple(str(a) for a in p.get("allow_without_rollback") or ()),
        commands=tuple(_recorded_commands(p.get("commands"))),
    )


def _recorded_commands(raw: object) -> list[CommandSettings]:
    """The runbook commands a plan recorded; one that no longer reads as a command is left out
    (its steps are then blocked on a replay, never run)."""
    out = []
    for c in raw if isinstance(raw, list) else []:
        try:
            out.append(CommandSettings.model_validate(c))
        except ValidationError:
            continue
    return out


class NotReady(ControllerError):
    """A stage that must wait (the verifier for fresh samples): the engine retries it at ``retry_at``."""

    def __init__(self, retry_at: float, why: str) -> None:
        super().__init__(why)
        self.retry_at = retry_at


@dataclass
class StageContext:
    run: dict[str, Any]  # the workflow_runs row
    evidence: Evidence
    chain: list[Artifact]  # the artifacts committed before this stage, in order
    clock: Callable[[], float]
    code_version: str
    posture: Posture
    memory: dict[str, Any] | None = None  # incident memory of this fingerprint, if any
    replay_of: dict[str, str] = field(default_factory=dict)  # kind -> original artifact id
    advisor: Any = None
    # Governed execution: the service (or, in a replay, the recorded results), the operator's
    # decision on this plan, and a reader of samples newer than a time (the verifier's).
    actions: Any = None
    approval: dict[str, Any] | None = None
    fresh: Callable[[float], Evidence | None] | None = None
    rules: HostRules = DEFAULT_HOST_RULES  # the host's detector rules

    def run_culprit(self) -> dict[str, Any]:
        raw = self.run.get("culprit") or "{}"
        got = json.loads(raw) if isinstance(raw, str) else raw
        return dict(got) if isinstance(got, dict) else {}

    def previous(self, kind: str) -> Artifact:
        for art in self.chain:
            if art.kind == kind:
                return art
        raise ControllerError(f"stage needs a {kind} artifact that the chain does not have")


@dataclass
class Output:
    payload: dict[str, Any]
    status: Status = "ok"
    evidence_refs: list[EvidenceRef] = field(default_factory=list)
    raw_refs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def uncertainty_of(ev: Evidence, notes: list[str]) -> Uncertainty:
    expected = ev.expected()
    states = set(expected.values()) or {"missing"}
    fresh = sum(1 for s in expected.values() if s == "fresh")
    freshness = states.pop() if len(states) == 1 else "mixed"
    return Uncertainty(freshness=freshness, coverage=round(fresh / max(1, len(expected)), 3), notes=notes[:8])


def window_ref(ctx: StageContext) -> EvidenceRef:
    ev = ctx.evidence
    return EvidenceRef(
        evidence_id="window",
        kind="window",
        host_id=ev.host_id,
        start=ev.start,
        end=ev.end,
        uri=f"workflows/evidence/{ctx.run['run_id']}/package.json#window",
    )


def stats(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
        "latest": round(values[-1], 3),
    }


class Role(ABC):
    kind: ClassVar[str]

    @abstractmethod
    def compute(self, ctx: StageContext) -> Output:
        """The stage's payload from its inputs; pure, except for reading ctx."""

    def run(self, ctx: StageContext) -> Artifact:
        started = ctx.clock()
        out = self.compute(ctx)
        finished = ctx.clock()
        original = ctx.replay_of.get(self.kind)
        return artifacts.build(
            kind=self.kind,
            workflow_id=ctx.run["workflow_id"],
            incident_id=ctx.run["incident_id"],
            correlation_id=ctx.run["correlation_id"],
            started_at=started,
            finished_at=finished,
            status=out.status,
            inputs=[a.artifact_id for a in ctx.chain],
            evidence_refs=out.evidence_refs or [window_ref(ctx)],
            raw_refs=out.raw_refs,
            replay=Replay(
                replayable=True, replay_of=original, deterministic=True, code_version=ctx.code_version
            ),
            uncertainty=uncertainty_of(ctx.evidence, out.notes),
            payload=out.payload,
            id_salt="replay:" + original if original else "",
        )


ROLES: dict[str, Role] = {}


class UnknownRoleError(ControllerError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"no role produces {kind!r}; known: {', '.join(sorted(ROLES))}")


def register(cls: type[Role]) -> type[Role]:
    ROLES[cls.kind] = cls()
    return cls


def role_for(kind: str) -> Role:
    try:
        return ROLES[kind]
    except KeyError:
        raise UnknownRoleError(kind) from None
