"""Actuators: the only code that changes live state, each with a safety class.

An actuator validates its parameters against a schema, says what it would do
(``describe``, the dry run), reads the live state it would change (``probe``),
changes it (``apply``, returning the state after and the data a rollback needs)
and, where one exists, undoes it (``rollback``). ``settle`` decides from a fresh
probe whether an intent whose result was never recorded took effect: the executor
never runs an action twice blindly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from collector.cgroups import Layout, discover_layout, parse_mountinfo
from controller.errors import ControllerError

if TYPE_CHECKING:
    from controller.config import CommandSettings

SafetyClass = Literal["read_only", "safe_reversible", "impacting", "destructive"]
SAFETY_CLASSES: tuple[SafetyClass, ...] = ("read_only", "safe_reversible", "impacting", "destructive")
Settled = Literal["applied", "not_applied", "unknown"]


class ActuatorError(ControllerError):
    """An action that cannot run, or failed: the message says why, for the execution result."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


@dataclass(frozen=True)
class KubeTarget:
    """The Kubernetes API the cluster actuators call (the official client)."""

    host: str
    token: str | None = None
    verify_ssl: bool = True
    ca_file: str | None = None
    # Read for each action when set (a bound service-account token rotates under a pod).
    token_file: str | None = None


@dataclass(frozen=True)
class HostEnv:
    """Where the host's kernel interfaces are, passed in (tests point it at fixture trees)."""

    proc_root: Path = Path("/proc")
    cgroups: Layout = field(default_factory=lambda: Layout(v2=None, v1={}))
    kube: KubeTarget | None = None
    commands: tuple[CommandSettings, ...] = ()  # the runbook commands run_command may run


def host_env(
    root: Path = Path("/"), kube: KubeTarget | None = None, commands: tuple[CommandSettings, ...] = ()
) -> HostEnv:
    """This host's interfaces under root (a container mounts the host's /proc and /sys there)."""
    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    except OSError:
        mounts = []
    return HostEnv(
        proc_root=root / "proc", cgroups=discover_layout(mounts, root / "sys"), kube=kube, commands=commands
    )


@dataclass(frozen=True)
class Applied:
    after: dict[str, Any]
    rollback: dict[str, Any] | None  # None: this action has no undo


class Actuator(ABC):
    name: ClassVar[str]
    safety_class: ClassVar[SafetyClass]
    params_model: ClassVar[type[Params]]
    reversible: ClassVar[bool] = False
    # Families this action brings about on its own target while it stands (a CPU quota
    # throttles the cgroup it caps): a sighting of one is the change working, not a new fault.
    expected_effects: ClassVar[tuple[str, ...]] = ()
    # What shows whether it worked, beyond the family's own signal the verifier compares.
    verify_signal: ClassVar[str | None] = None

    @classmethod
    def explains(
        cls, family: str, culprit: dict[str, Any], params: dict[str, Any], before: dict[str, Any]
    ) -> bool:
        """Whether a sighting of ``family`` on ``culprit`` is this action (applied with
        ``params`` over the state ``before``) doing what it was made to do. None by default."""
        return False

    def __init__(self, env: HostEnv) -> None:
        self.env = env

    def validate(self, params: dict[str, Any]) -> Params:
        try:
            return self.params_model.model_validate(params)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}" for e in exc.errors()
            )
            raise ActuatorError(f"{self.name}: bad parameters: {problems}") from None

    @abstractmethod
    def describe(self, p: Any) -> str:
        """One line saying what apply would do: the dry run."""

    @abstractmethod
    def probe(self, p: Any) -> dict[str, Any]:
        """The live state apply would change, read now."""

    @abstractmethod
    def apply(self, p: Any, before: dict[str, Any]) -> Applied: ...

    def desired(self, p: Any, before: dict[str, Any]) -> dict[str, Any] | None:
        """The state apply leads to, for settle; None when it cannot be told from a probe."""
        return None

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any] | None:
        """What rollback needs, from the state read before the change; None: no undo. Apply
        records it, and so does settling an intent that had no result (crash, timeout)."""
        return None

    def rollback(self, p: Any, data: dict[str, Any]) -> dict[str, Any]:
        raise ActuatorError(f"{self.name} has no rollback")

    def settle(self, p: Any, before: dict[str, Any], now: dict[str, Any]) -> Settled:
        want = self.desired(p, before)
        if want is None:
            return "unknown"
        if all(now.get(k) == v for k, v in want.items()):
            return "applied"
        if all(now.get(k) == before.get(k) for k in want):
            return "not_applied"
        return "unknown"


ACTUATORS: dict[str, type[Actuator]] = {}


def actuator(cls: type[Actuator]) -> type[Actuator]:
    ACTUATORS[cls.name] = cls
    return cls


def get(name: str, env: HostEnv) -> Actuator:
    try:
        return ACTUATORS[name](env)
    except KeyError:
        raise ActuatorError(f"no actuator {name!r}; known: {', '.join(sorted(ACTUATORS))}") from None
