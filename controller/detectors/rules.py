"""Rules an operator tunes, in the Prometheus habit: per family, its thresholds and hold
times (``params``), how long a finding must hold before it counts (``for``), labels and
a runbook URL for what it opens, and overrides for some hosts (``match``: host-id
globs, and host labels as their collectors report them). Rules apply in file order, a later
matching rule over an earlier one, over each family's registered defaults.

    rules:
      - family: cpu_saturation
        params: {cpu_busy_pct: 95}
        for: 30s
        labels: {team: platform}
        runbook_url: https://runbooks.example/cpu
      - family: cpu_saturation
        match: {hosts: ["batch-*"]}
        params: {cpu_busy_pct: 99}
      - family: anomaly
        params: {z: 3.0}

The file is read once, at start (``workflow.rules_file``); a bad one is refused then
with the rule and the field named. ``docs/rules.md`` lists every family's tunables.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from collector.settings_io import read_yaml_mapping
from controller.config import HOST_PATTERN
from controller.detectors.base import DETECTORS, Params
from controller.detectors.expr import MAX_EXPR, ExprError, Node, parse_expr
from controller.detectors.general import DEFAULT_GENERAL, GENERAL_FAMILIES, GeneralRules
from controller.errors import ControllerError

MAX_RULES = 2000
MAX_HOSTS_CACHED = 4096  # hosts whose effective rules are kept
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# The general families' tunables: GeneralRules' numeric fields (each family reads them all).
GENERAL_TUNABLES = {
    f.name: float(getattr(DEFAULT_GENERAL, f.name))
    for f in fields(GeneralRules)
    if isinstance(getattr(DEFAULT_GENERAL, f.name), int | float)
}


class RulesError(ControllerError):
    pass


def tunables(family: str) -> dict[str, float]:
    """What a rule may set for ``family``, with the defaults."""
    if family in GENERAL_FAMILIES:
        return dict(GENERAL_TUNABLES)
    return dict(DETECTORS[family].defaults)


def families() -> tuple[str, ...]:
    return tuple(sorted({*DETECTORS, *GENERAL_FAMILIES}))


def parse_duration(value: Any) -> float:
    """Seconds from a number or "250ms", "30s", "5m", "1h"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 30s, 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if m is None:
            raise ValueError(f"{value!r} is not a duration (e.g. 30s, 5m, 1h)")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0 or seconds > 86_400:
        raise ValueError("a duration lies between 0 and 24h")
    return seconds


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Match(_Strict):
    hosts: tuple[str, ...] = Field(default=(), max_length=256)  # globs on host ids; none: every host
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)  # every one must match

    @field_validator("hosts")
    @classmethod
    def _globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for g in v:
            if not HOST_PATTERN.match(g):
                raise ValueError(f"host glob {g!r}: host-id characters and * ? [ ] !, 1 to 128")
        return v

    def matches(self, host_id: str, labels: dict[str, str]) -> bool:
        if self.hosts and not any(fnmatch.fnmatchcase(host_id, g) for g in self.hosts):
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


def _labels(v: dict[str, str]) -> dict[str, str]:
    for k, x in v.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_./-]{0,127}", k) or len(x) > 256:
            raise ValueError(f"label {k!r}: a name like team or app.kubernetes.io/name, a value under 256")
    return v


# What a rule and an alert share: how long it must hold, its labels, its runbook.
Duration = Annotated[float | None, BeforeValidator(lambda v: None if v is None else parse_duration(v))]
Labels = Annotated[dict[str, str], AfterValidator(_labels), Field(max_length=32)]
RunbookUrl = Annotated[str | None, Field(max_length=2048, pattern=r"^https?://\S+$")]


class Rule(_Strict):
    family: str
    match: Match = Field(default_factory=Match)
    params: dict[str, float] = Field(default_factory=dict, max_length=64)
    for_s: Duration = Field(default=None, alias="for")
    labels: Labels = Field(default_factory=dict)
    runbook_url: RunbookUrl = None
    enabled: bool | None = None

    @model_validator(mode="after")
    def _known(self) -> Rule:
        if self.family not in families():
            raise ValueError(f"unknown family {self.family!r}; known: {', '.join(families())}")
        known = tunables(self.family)
        for name, value in self.params.items():
            if name not in known:
                raise ValueError(
                    f"{self.family} has no tunable {name!r}; it has: {', '.join(sorted(known)) or 'none'}"
                )
            if not math.isfinite(value):
                raise ValueError(f"{self.family}.{name} must be a finite number")
        return self


class Alert(_Strict):
    """An alert of the operator's own: a family named ``alert`` whose finding holds while
    ``expr`` does (controller/detectors/expr.py), on the hosts ``match`` selects."""

    alert: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    expr: str = Field(min_length=1, max_length=MAX_EXPR)
    match: Match = Field(default_factory=Match)
    for_s: Duration = Field(default=None, alias="for")
    labels: Labels = Field(default_factory=dict)
    runbook_url: RunbookUrl = None
    confidence: float = Field(default=0.7, ge=0, le=1, allow_inf_nan=False)
    summary: str | None = Field(default=None, max_length=200)

    @field_validator("expr")
    @classmethod
    def _expr(cls, v: str) -> str:
        try:
            parse_expr(v)
        except ExprError as exc:
            raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _new_name(self) -> Alert:
        if self.alert in families():
            raise ValueError(f"alert {self.alert!r} is a built-in family: tune it under rules instead")
        return self


class RulesFile(_Strict):
    rules: tuple[Rule, ...] = Field(default=(), max_length=MAX_RULES)
    alerts: tuple[Alert, ...] = Field(default=(), max_length=MAX_RULES)

    @model_validator(mode="after")
    def _unique(self) -> RulesFile:
        names = [a.alert for a in self.alerts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"alerts named twice: {', '.join(twice)}")
        return self

    def alert_names(self) -> frozenset[str]:
        return frozenset(a.alert for a in self.alerts)


@dataclass(frozen=True)
class HostRules:
    """The rules as they apply to one host."""

    params: dict[str, Params] = field(default_factory=dict)  # family -> its tunables
    general: GeneralRules = DEFAULT_GENERAL
    hold_s: dict[str, float] = field(default_factory=dict)  # family -> its `for`
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    runbook_url: dict[str, str] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    alerts: tuple[tuple[Alert, Node], ...] = ()  # the operator's own, with their parsed expressions

    def enabled(self, family: str) -> bool:
        return family not in self.disabled


DEFAULT_HOST_RULES = HostRules()


class Rules:
    """A parsed rules file; ``for_host`` gives a host's effective rules (kept for the
    MAX_HOSTS_CACHED hosts asked about last)."""

    def __init__(self, spec: RulesFile | None = None) -> None:
        self.spec = spec or RulesFile()
        self._cache: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], HostRules] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:  # handed to analysis workers: the spec, not the cache
        return {"spec": self.spec}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.spec = state["spec"]
        self._cache = OrderedDict()

    @classmethod
    def load(cls, path: Path | None) -> Rules:
        if path is None:
            return cls()
        data = read_yaml_mapping(path, "rules file", RulesError)
        try:
            return cls(RulesFile.model_validate(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False)[:10]
            )
            raise RulesError(f"rules file {path}: {problems}") from None

    def for_host(self, host_id: str, labels: dict[str, str] | None = None) -> HostRules:
        if not self.spec.rules and not self.spec.alerts:
            return DEFAULT_HOST_RULES
        key = (host_id, tuple(sorted((labels or {}).items())))
        got = self._cache.get(key)
        if got is not None:
            self._cache.move_to_end(key)
            return got
        got = self._effective(host_id, labels or {})
        self._cache[key] = got
        while len(self._cache) > MAX_HOSTS_CACHED:
            self._cache.popitem(last=False)
        return got

    def _effective(self, host_id: str, labels: dict[str, str]) -> HostRules:
        params: dict[str, dict[str, float]] = {}
        general: dict[str, float] = {}
        hold: dict[str, float] = {}
        out_labels: dict[str, dict[str, str]] = {}
        runbook: dict[str, str] = {}
        disabled: set[str] = set()
        for rule in self.spec.rules:
            if not rule.match.matches(host_id, labels):
                continue
            fam = rule.family
            if fam in GENERAL_FAMILIES:
                general.update(rule.params)
            else:
                params.setdefault(fam, tunables(fam)).update(rule.params)
            if rule.for_s is not None:
                hold[fam] = rule.for_s
            if rule.labels:
                out_labels.setdefault(fam, {}).update(rule.labels)
            if rule.runbook_url:
                runbook[fam] = rule.runbook_url
            if rule.enabled is not None:
                (disabled.discard if rule.enabled else disabled.add)(fam)
        alerts = []
        for a in self.spec.alerts:
            if not a.match.matches(host_id, labels):
                continue
            alerts.append((a, parse_expr(a.expr)))
            if a.for_s is not None:
                hold[a.alert] = a.for_s
            if a.labels:
                out_labels[a.alert] = dict(a.labels)
            if a.runbook_url:
                runbook[a.alert] = a.runbook_url
        g = DEFAULT_GENERAL
        if general:
            typed = {k: type(getattr(g, k))(v) for k, v in general.items()}
            g = replace(g, **typed)
        return HostRules(dict(params), g, hold, out_labels, runbook, frozenset(disabled), tuple(alerts))
