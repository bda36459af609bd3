"""The workflow's option objects, each built from its settings sub-model in one place.

Every knob's default is declared once, in controller/config.py; the dataclasses here
take theirs from it, so a test that builds options by hand gets the same defaults a
controller started with no settings does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from controller.config import ExecutionSettings, FleetSettings, WorkflowSettings
from controller.detectors.rules import Rules
from controller.workflow.roles import Posture

_W = WorkflowSettings()
_X = ExecutionSettings()
T = TypeVar("T")


def _picked(cls: type[T], settings: Any, **extra: Any) -> T:
    """``cls`` with each of its fields that ``settings`` has taken from there."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{n: getattr(settings, n) for n in names if hasattr(settings, n)} | extra)


@dataclass(frozen=True)
class ExecutionOptions:
    approval_ttl_s: float = _X.approval_ttl_s
    action_timeout_s: float = _X.action_timeout_s
    max_concurrent_actions: int = _X.max_concurrent_actions
    tool_call_budget: int = _X.tool_call_budget
    iteration_budget: int = _X.iteration_budget
    idempotency_ttl_s: float = _X.idempotency_ttl_s
    verify_settle_s: float = _X.verify_settle_s
    verify_min_samples: int = _X.verify_min_samples
    verify_deadline_s: float = _X.verify_deadline_s
    rollback_on_not_improved: bool = _X.rollback_on_not_improved

    @classmethod
    def from_settings(cls, x: ExecutionSettings) -> ExecutionOptions:
        return _picked(cls, x)


def posture_from(x: ExecutionSettings, local_hosts: list[str]) -> Posture:
    """The posture the settings give; ``local_hosts`` when the settings name none."""
    hosts = x.local_hosts if x.local_hosts is not None else local_hosts
    return _picked(
        Posture,
        x,
        local_hosts=tuple(hosts),
        allow_without_rollback=tuple(x.allow_without_rollback),
        commands=tuple(x.commands),
    )


@dataclass(frozen=True)
class WorkflowOptions:
    window_s: float = _W.window_s
    open_threshold: float = _W.open_threshold
    attach_window_s: float = _W.attach_window_s
    resolve_after_clean: int = _W.resolve_after_clean
    queue_max: int = _W.queue_max
    posture: Posture = field(default_factory=Posture)
    rules: Rules = field(default_factory=Rules)  # the detectors' tunables, per host
    fleet: FleetSettings = field(default_factory=FleetSettings)

    @classmethod
    def from_settings(cls, w: WorkflowSettings, posture: Posture) -> WorkflowOptions:
        rules = Rules.load(Path(w.rules_file) if w.rules_file else None)
        return _picked(cls, w, posture=posture, rules=rules)
