"""The read-only query API over stored runs: rows, chains checked against their commits,
evidence, and a replay computed and written nowhere.

The stage runner reads through here before it acts; the API and the workbench read
through here to answer. Nothing here writes, so a workbench may point it at a
read-only store. Payload keys (where each file of a run lives) are defined here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import msgspec

from controller import artifacts
from controller.artifacts import KINDS, Artifact, ArtifactTampered
from controller.detectors import Evidence
from controller.detectors.rules import Rules
from controller.errors import UnknownRun
from controller.store.payloads import PayloadStore
from controller.store.runs import RunRow, RunStore
from controller.workflow.roles import Posture, StageContext, role_for
from controller.workflow.roles.base import recorded_posture
from controller.workflow.roles.policy_gate import plan_hash_of

CODE_VERSION = "incidentlab-workflow/0.1.0"


def message_key(run_id: str, art: Artifact, replay: bool = False) -> str:
    folder = "replays" if replay else "messages"
    return f"workflows/{folder}/{run_id}/{art.stage_index:02d}-{art.kind}.json"


def evidence_key(run_id: str) -> str:
    return f"workflows/evidence/{run_id}/package.json"


def after_key(run_id: str) -> str:
    """The window the verifier compared against: kept so a replay compares the same."""
    return f"workflows/evidence/{run_id}/after.json"


class RunReader:
    def __init__(
        self,
        runs: RunStore,
        payloads: PayloadStore,
        *,
        posture: Posture | None = None,
        code_version: str = CODE_VERSION,
        clock: Callable[[], float] = time.time,
        rules: Rules | None = None,
    ) -> None:
        self.runs = runs
        self.payloads = payloads
        self.rules = rules or Rules()  # what the analysis stages detect under, per host
        # The posture a replay decides under when its run recorded none.
        self.posture = posture or Posture()
        self.code_version = code_version
        self.clock = clock

    def load_run(self, run_id: str) -> RunRow | None:
        return self.runs.run(run_id)

    def load_evidence(self, run_id: str, committed: str | None = None) -> Evidence:
        """The run's evidence window, its sha256 checked against the one its row recorded at
        open (``committed``; runs from before that column are not checked). Raises
        ArtifactTampered naming the file when it is missing, unreadable or changed."""
        key = evidence_key(run_id)
        try:
            doc = msgspec.json.decode(self.payloads.get(key))
            # A completed run's file is the full package; before that, the window alone.
            window = doc["window"] if "manifest" in doc else doc
            if committed is not None:
                actual = hashlib.sha256(msgspec.json.encode(window, order="sorted")).hexdigest()
                if actual != committed:
                    why = f"hashes to {actual[:12]}..., not the {committed[:12]}... recorded at open"
                    raise ArtifactTampered(run_id, "evidence window", key, why)
            return Evidence.from_dict(window)
        except FileNotFoundError as exc:
            raise ArtifactTampered(run_id, "evidence window", key, "is missing") from exc
        except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactTampered(run_id, "evidence window", key, f"cannot be read: {exc}") from exc

    def package(self, run_id: str) -> bytes:
        """The evidence package as stored (FileNotFoundError when there is none), with the
        verifier's window as ``after`` when the run changed something."""
        body = self.payloads.get(evidence_key(run_id))
        after = self.after(run_id)
        return body if after is None else body[:-1] + b',"after":' + after + b"}"

    def after(self, run_id: str) -> bytes | None:
        try:
            return self.payloads.get(after_key(run_id))
        except FileNotFoundError:
            return None

    def _stored_chain(self, run_id: str, replay: bool) -> list[tuple[Artifact, str, str]]:
        """(artifact, payload key, the sha256 its row recorded at commit), in stage order."""
        with self.runs.read() as tx:
            refs = tx.chain_refs(run_id, replay=replay)
        out = []
        for ref in refs:
            key, kind = ref["path"], ref["kind"]
            try:
                out.append((artifacts.decode(self.payloads.get(key)), key, ref["sha256"]))
            except FileNotFoundError as exc:  # committed, then removed: what acts on it must refuse
                raise ArtifactTampered(run_id, kind, key, "is missing") from exc
            except artifacts.ArtifactError as exc:  # say which file, so it can be found and looked at
                raise ArtifactTampered(run_id, kind, key, f"cannot be read: {exc}") from exc
        return out

    def load_chain(self, run_id: str, replay: bool = False) -> list[Artifact]:
        """The chain as stored, unchecked (integrity_problems says what is wrong with it)."""
        return [art for art, _, _ in self._stored_chain(run_id, replay)]

    @staticmethod
    def _tampering(art: Artifact, committed: str) -> str | None:
        actual = artifacts.digest(art)
        if actual != committed:
            return f"hashes to {actual[:12]}..., not the {committed[:12]}... committed for it"
        if actual != art.sha256:
            return f"hashes to {actual[:12]}..., not the {art.sha256[:12]}... it claims"
        if art.kind == "execution_plan":
            p = art.payload
            if plan_hash_of(p.get("posture", {}), p.get("steps", [])) != p.get("plan_hash"):
                return "has a plan_hash that its posture and steps do not give"
        return None

    def _checked_chain(self, run_id: str, replay: bool) -> list[tuple[Artifact, ArtifactTampered | None]]:
        out = []
        for art, key, committed in self._stored_chain(run_id, replay):
            why = self._tampering(art, committed)
            out.append((art, ArtifactTampered(run_id, art.kind, key, why) if why else None))
        return out

    def integrity_problems(self, run_id: str, replay: bool = False) -> list[str]:
        return [str(bad) for _, bad in self._checked_chain(run_id, replay) if bad is not None]

    def verified_chain(self, run_id: str) -> list[Artifact]:
        """The chain, each artifact's sha256 recomputed from its stored content and compared
        with the one its row recorded at commit (and the plan's hash with its steps): what
        approval and execution act on. Raises ArtifactTampered naming the first that differs."""
        checked = self._checked_chain(run_id, False)
        bad = next((b for _, b in checked if b is not None), None)
        if bad is not None:
            raise bad
        return [art for art, _ in checked]

    def compute_replay(self, run_id: str, clock: Callable[[], float] | None = None) -> list[Artifact]:
        """Every stage re-run from the stored evidence with the current code, written
        nowhere: what a read-only workbench compares. Same inputs and clock: same sha256s."""
        clock = clock or self.clock
        run = self.load_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        stored = self.load_chain(run_id)
        original = {a.kind: a.artifact_id for a in stored}
        ev = self.load_evidence(run_id, run.get("evidence_sha256"))
        memory = _recorded_memory(stored)
        # The advisor is an outside input, like the memory: a replay reuses what it said then.
        said = next((a.payload.get("advisor") for a in stored if a.kind == "root_cause_hypothesis"), None)
        advisor = _RecordedAdvice(said) if said is not None else None
        actions = _RecordedExecution(stored)
        # The posture is an outside input too: the plan is re-decided under the recorded one.
        plan = next((a.payload for a in stored if a.kind == "execution_plan"), None)
        posture = recorded_posture(plan, run["host_id"]) if plan is not None else self.posture
        chain: list[Artifact] = []
        for kind in KINDS:
            ctx = StageContext(
                run=dict(run),
                evidence=ev,
                chain=chain,
                clock=clock,
                code_version=self.code_version,
                posture=posture,
                memory=memory,
                replay_of=original,
                rules=self.rules.for_host(run["host_id"], ev.labels),
                advisor=advisor,
                actions=actions,
            )
            chain.append(role_for(kind).run(ctx))
        return chain


def _recorded_memory(chain: list[Artifact]) -> dict[str, Any] | None:
    """The incident memory the original hypothesis stage saw, so a replay sees the same."""
    for art in chain:
        if art.kind == "root_cause_hypothesis":
            mem = art.payload.get("memory", {})
            if mem.get("seen_before"):
                return {
                    "occurrences": mem["occurrences"],
                    "last_run_id": mem["last_run_id"],
                    "resolution": mem["last_resolution"],
                }
    return None


class _RecordedAdvice:
    """Stands in for the advisor in a replay: answers what the original run recorded."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def annotate(self, chain: list[Artifact], hypotheses: list[dict[str, Any]]) -> dict[str, Any]:
        return self.record


class _RecordedExecution:
    """Stands in for the execution service in a replay: a replay never acts and never
    reads live state, so the executor and verifier answer what the run recorded."""

    def __init__(self, chain: list[Artifact]) -> None:
        by_kind = {a.kind: a.payload for a in chain}
        results = by_kind.get("execution_result", {}).get("results", [])
        self.recorded_results = {r["idempotency_key"]: r for r in results}
        verification = by_kind.get("verification_result")
        self.recorded_verification = verification
