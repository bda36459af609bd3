"""Silences and maintenance windows: an operator's word that some findings are known.

A silence matches host-id globs and families (at least one of the two); a maintenance
window matches hosts, every family. While one is active (starts_at <= now < ends_at,
not expired) a run that opens for a match still opens, is analysed and keeps its chain:
nothing is lost. It carries ``silenced_by`` (the silence's id), so whatever pages skips
it and the API and the workbench show why. Creating and expiring one are audited, with
who and why; a silence is never deleted, only expired.

The active ones are read from the store at most every REFRESH_S, so a trigger costs no
query of its own.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import threading
import time
from collections.abc import Callable, Collection
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from controller.config import HOST_PATTERN
from controller.detectors import FAMILIES
from controller.errors import Conflict, Invalid, UnknownSilence
from controller.store.runs import RunStore, SilenceRow

Kind = Literal["silence", "maintenance"]
MAX_ACTIVE = 1000  # active silences at once: more is refused (a script run amok)
MAX_DURATION_S = 90 * 86_400
REFRESH_S = 5.0


# HOST_PATTERN as JSON Schema writes a pattern (no \Z there).
HostGlob = Annotated[str, StringConstraints(pattern="^" + HOST_PATTERN.pattern.removesuffix(r"\Z") + "$")]
FamilyName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class SilenceSpec(BaseModel):
    """What an operator asks for (the API's body). What a schema cannot say (a matcher
    named, the times in order) is checked by ``Silences.create``, naming the field."""

    model_config = ConfigDict(extra="forbid")
    kind: Kind = "silence"
    hosts: list[HostGlob] = Field(default_factory=list, max_length=256)
    families: list[FamilyName] = Field(default_factory=list, max_length=64)
    starts_at: float | None = Field(default=None, ge=0, le=1e11, allow_inf_nan=False)  # none: now
    ends_at: float = Field(ge=0, le=1e11, allow_inf_nan=False)
    comment: str = Field(min_length=1, max_length=2000)


def _check(spec: SilenceSpec, known: Collection[str]) -> None:
    unknown = sorted(set(spec.families) - set(known))
    if unknown:
        raise Invalid("families", f"unknown families {unknown}; known: {', '.join(sorted(known))}")
    if spec.kind == "maintenance" and (not spec.hosts or spec.families):
        raise Invalid("hosts", "a maintenance window names hosts and no families (it covers them all)")
    if spec.kind == "silence" and not (spec.hosts or spec.families):
        raise Invalid("hosts", "a silence names hosts, families or both: one matching everything is refused")


def matches(row: SilenceRow, host_id: str, family: str) -> bool:
    hosts, families = json.loads(row["hosts"]), json.loads(row["families"])
    if hosts and not any(fnmatch.fnmatchcase(host_id, g) for g in hosts):
        return False
    return not families or family in families


class Silences:
    def __init__(
        self, runs: RunStore, clock: Callable[[], float] = time.time, families: Collection[str] = FAMILIES
    ) -> None:
        self.runs = runs
        self.clock = clock
        self.families = frozenset(families)  # what a silence may name: built-in and the rules' alerts
        self._lock = threading.Lock()
        self._active: list[SilenceRow] = []
        self._read_at = -float("inf")

    def create(self, spec: SilenceSpec, actor: str) -> SilenceRow:
        _check(spec, self.families)
        now = self.clock()
        starts = spec.starts_at if spec.starts_at is not None else now
        if spec.ends_at <= max(starts, now):
            raise Invalid("ends_at", "ends_at must be after starts_at and in the future")
        if spec.ends_at - starts > MAX_DURATION_S:
            raise Invalid("ends_at", f"a silence lasts at most {MAX_DURATION_S // 86_400} days")
        seed = f"{actor}|{now}|{spec.model_dump_json()}"
        row: SilenceRow = {
            "silence_id": f"sil-{hashlib.sha256(seed.encode()).hexdigest()[:16]}",
            "kind": spec.kind,
            "hosts": json.dumps(sorted(set(spec.hosts))),
            "families": json.dumps(sorted(set(spec.families))),
            "starts_at": starts,
            "ends_at": spec.ends_at,
            "comment": spec.comment,
            "created_by": actor[:128],
            "created_at": now,
            "expired_at": None,
            "expired_by": None,
        }
        with self.runs.begin() as tx:
            if tx.count_active_silences(now) >= MAX_ACTIVE:
                raise Conflict(f"{MAX_ACTIVE} silences are active: expire some first")
            tx.insert_silence(row)
            # The runs live now that it covers are silenced too, as the ones it opens later.
            covered = [r for r in tx.live_unsilenced() if matches(row, r["host_id"], r["family"])]
            tx.silence_runs([r["run_id"] for r in covered], row["silence_id"])
            tx.audit(
                at=now,
                actor=actor,
                kind="silence_created",
                detail=public(row)
                | {"runs": [r["run_id"] for r in covered][:100], "run_count": len(covered)},
            )
        self._read_at = -float("inf")
        return row

    def expire(self, silence_id: str, actor: str, reason: str) -> SilenceRow:
        now = self.clock()
        with self.runs.begin() as tx:
            row = tx.silence(silence_id)
            if row is None:
                raise UnknownSilence(silence_id)
            if row["expired_at"] is not None or row["ends_at"] <= now:
                raise Conflict(f"silence {silence_id} has ended already")
            tx.expire_silence(silence_id, at=now, actor=actor[:128])
            tx.audit(
                at=now,
                actor=actor,
                kind="silence_expired",
                detail={"silence_id": silence_id, "reason": reason},
            )
            row = tx.silence(silence_id)
        assert row is not None
        self._read_at = -float("inf")
        return row

    def list(self, active_only: bool, limit: int) -> list[SilenceRow]:
        with self.runs.begin() as tx:
            return tx.silences(active_at=self.clock() if active_only else None, limit=limit)

    def silencing(self, host_id: str, family: str) -> str | None:
        """The id of an active silence or maintenance window that covers this, if any."""
        now = self.clock()
        with self._lock:
            if now - self._read_at >= REFRESH_S:
                with self.runs.begin() as tx:
                    self._active = tx.silences(active_at=now, limit=MAX_ACTIVE)
                self._read_at = now
            active = self._active
        for row in active:
            if row["starts_at"] <= now < row["ends_at"] and matches(row, host_id, family):
                return row["silence_id"]
        return None


def public(row: SilenceRow) -> dict[str, Any]:
    """A silence as the API and the audit log show it (matchers as lists)."""
    out: dict[str, Any] = dict(row)
    out["hosts"] = json.loads(row["hosts"])
    out["families"] = json.loads(row["families"])
    return out
