"""cgroup actuators on v2 (cpu.max, memory.high, cgroup.freeze) or v1
(cpu.cfs_quota_us, memory.soft_limit_in_bytes, freezer.state), whichever hierarchy
holds the controller on this host; a hybrid host (v1 cpu and memory, v2 unified)
uses v1 for those. The quota and soft limit are safe_reversible (the old file
contents are the rollback data); freezing is impacting (rollback: thaw)."""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from controller.actuators.base import Actuator, ActuatorError, Applied, Params, actuator

MIN_MEMORY_HIGH = 64 << 20  # a soft limit below this starves the cgroup, not just slows it
V1_UNLIMITED_SOFT = 9223372036854771712  # memory.soft_limit_in_bytes when unset (PAGE_COUNTER_MAX)


class CgroupParams(Params):
    cgroup: str = Field(min_length=1, max_length=4096)

    @field_validator("cgroup")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/") or "\0" in v:
            raise ValueError("must be an absolute cgroup path without '..'")
        return v.rstrip("/") or "/"


class CpuQuotaParams(CgroupParams):
    cores: float = Field(gt=0, le=4096)


class MemorySoftParams(CgroupParams):
    # None: 90% of the cgroup's usage when the action runs, at least 64 MiB.
    bytes: int | None = Field(default=None, ge=MIN_MEMORY_HIGH)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ActuatorError(
            f"{path} does not exist: no such cgroup, or the controller is not enabled"
        ) from None
    except OSError as exc:
        raise ActuatorError(f"cannot read {path}: {exc.strerror}") from None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        hint = " (needs root or delegation of the cgroup)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
        raise ActuatorError(f"cannot write {value!r} to {path}: {exc.strerror}{hint}") from None


class _CgroupActuator(Actuator):
    controller: str

    def where(self, p: CgroupParams) -> tuple[int, Path]:
        """The cgroup's directory and the hierarchy version holding this controller."""
        layout = self.env.cgroups
        if self.controller in layout.v1:
            version, root = 1, layout.v1[self.controller]
        elif layout.v2 is not None and (
            self.controller == "freezer" or self.controller in _read(layout.v2 / "cgroup.controllers").split()
        ):
            version, root = 2, layout.v2
        else:
            raise ActuatorError(f"no {self.controller} cgroup controller on this host")
        path = root / p.cgroup.lstrip("/")
        if not path.is_dir():
            raise ActuatorError(f"cgroup {p.cgroup} does not exist under {root}")
        return version, path


@actuator
class CgroupCpuQuota(_CgroupActuator):
    name = "cgroup_cpu_quota"
    safety_class = "safe_reversible"
    params_model = CpuQuotaParams
    reversible = True
    expected_effects = ("cgroup_cpu_throttling",)
    controller = "cpu"

    @classmethod
    def explains(
        cls, family: str, culprit: dict[str, Any], params: dict[str, Any], before: dict[str, Any]
    ) -> bool:
        """A cap it lowered throttles the cgroup it capped, at that cap; a quota it raised (to
        end throttling) explains no throttling, nor does a cap someone changed since."""
        cgroup, cores = params.get("cgroup"), params.get("cores")
        if family not in cls.expected_effects or not isinstance(cores, int | float):
            return False
        if cgroup not in (culprit.get("id"), culprit.get("cgroup")):
            return False
        quota, period = before.get("quota_us"), before.get("period_us")
        was = quota / period if isinstance(quota, int) and isinstance(period, int) and period > 0 else None
        if was is not None and cores >= was:
            return False
        cap = culprit.get("quota_cores")
        return isinstance(cap, int | float) and abs(cap - cores) <= 0.01 * max(cores, 0.01)

    def describe(self, p: CpuQuotaParams) -> str:
        return f"limit cgroup {p.cgroup} to {p.cores:g} CPU cores"

    def probe(self, p: CpuQuotaParams) -> dict[str, Any]:
        version, path = self.where(p)
        if version == 2:
            quota, period = _read(path / "cpu.max").split()
            return {
                "version": 2,
                "quota_us": None if quota == "max" else int(quota),
                "period_us": int(period),
            }
        quota_us = int(_read(path / "cpu.cfs_quota_us"))
        return {
            "version": 1,
            "quota_us": None if quota_us < 0 else quota_us,
            "period_us": int(_read(path / "cpu.cfs_period_us")),
        }

    def _quota(self, p: CpuQuotaParams, before: dict[str, Any]) -> int:
        return max(1000, int(p.cores * before["period_us"]))  # the kernel's minimum is 1 ms

    def desired(self, p: CpuQuotaParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"quota_us": self._quota(p, before)}

    def _set(self, p: CpuQuotaParams, quota_us: int | None, period_us: int) -> None:
        version, path = self.where(p)
        if version == 2:
            _write(path / "cpu.max", f"{'max' if quota_us is None else quota_us} {period_us}")
        else:
            _write(path / "cpu.cfs_quota_us", str(-1 if quota_us is None else quota_us))

    def apply(self, p: CpuQuotaParams, before: dict[str, Any]) -> Applied:
        self._set(p, self._quota(p, before), before["period_us"])
        return Applied(self.probe(p), self.rollback_data(before))

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any]:
        return {"quota_us": before["quota_us"], "period_us": before["period_us"]}

    def rollback(self, p: CpuQuotaParams, data: dict[str, Any]) -> dict[str, Any]:
        self._set(p, data["quota_us"], data["period_us"])
        return self.probe(p)


@actuator
class CgroupMemorySoftLimit(_CgroupActuator):
    name = "cgroup_memory_soft_limit"
    safety_class = "safe_reversible"
    params_model = MemorySoftParams
    reversible = True
    controller = "memory"

    def describe(self, p: MemorySoftParams) -> str:
        size = f"{p.bytes} bytes" if p.bytes else "90% of its usage"
        return f"set the memory soft limit of cgroup {p.cgroup} to {size}"

    def probe(self, p: MemorySoftParams) -> dict[str, Any]:
        version, path = self.where(p)
        if version == 2:
            high = _read(path / "memory.high")
            return {
                "version": 2,
                "limit": None if high == "max" else int(high),
                "usage": int(_read(path / "memory.current")),
            }
        soft = int(_read(path / "memory.soft_limit_in_bytes"))
        return {
            "version": 1,
            "limit": None if soft >= V1_UNLIMITED_SOFT else soft,
            "usage": int(_read(path / "memory.usage_in_bytes")),
        }

    def _target(self, p: MemorySoftParams, before: dict[str, Any]) -> int:
        return p.bytes or max(MIN_MEMORY_HIGH, int(before["usage"] * 0.9) // 4096 * 4096)

    def desired(self, p: MemorySoftParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"limit": self._target(p, before)}

    def _set(self, p: MemorySoftParams, limit: int | None) -> None:
        version, path = self.where(p)
        if version == 2:
            _write(path / "memory.high", "max" if limit is None else str(limit))
        else:
            _write(path / "memory.soft_limit_in_bytes", "-1" if limit is None else str(limit))

    def apply(self, p: MemorySoftParams, before: dict[str, Any]) -> Applied:
        self._set(p, self._target(p, before))
        return Applied(self.probe(p), self.rollback_data(before))

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any]:
        return {"limit": before["limit"]}

    def rollback(self, p: MemorySoftParams, data: dict[str, Any]) -> dict[str, Any]:
        self._set(p, data["limit"])
        return self.probe(p)

    def settle(self, p: MemorySoftParams, before: dict[str, Any], now: dict[str, Any]) -> Any:
        # Usage moves on its own: only the limit tells (desired() names only the limit).
        return super().settle(p, before, now)


@actuator
class CgroupFreeze(_CgroupActuator):
    name = "cgroup_freeze"
    safety_class = "impacting"
    params_model = CgroupParams
    reversible = True
    controller = "freezer"
    wait_s = 2.0

    def describe(self, p: CgroupParams) -> str:
        return f"freeze every process of cgroup {p.cgroup} (thaw to undo)"

    def probe(self, p: CgroupParams) -> dict[str, Any]:
        version, path = self.where(p)
        if version == 2:
            events = dict(line.split() for line in _read(path / "cgroup.events").splitlines() if " " in line)
            return {"version": 2, "frozen": events.get("frozen") == "1"}
        return {"version": 1, "frozen": _read(path / "freezer.state") == "FROZEN"}

    def desired(self, p: CgroupParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"frozen": True}

    def _set(self, p: CgroupParams, frozen: bool) -> dict[str, Any]:
        version, path = self.where(p)
        if version == 2:
            _write(path / "cgroup.freeze", "1" if frozen else "0")
        else:
            _write(path / "freezer.state", "FROZEN" if frozen else "THAWED")
        # Freezing takes effect as each task reaches a safe point: wait for it, bounded.
        deadline = time.monotonic() + self.wait_s
        state = self.probe(p)
        while state["frozen"] != frozen and time.monotonic() < deadline:
            time.sleep(0.02)
            state = self.probe(p)
        return state

    def apply(self, p: CgroupParams, before: dict[str, Any]) -> Applied:
        return Applied(self._set(p, True), self.rollback_data(before))

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any]:
        return {"frozen": before["frozen"]}

    def rollback(self, p: CgroupParams, data: dict[str, Any]) -> dict[str, Any]:
        return self._set(p, bool(data["frozen"]))
