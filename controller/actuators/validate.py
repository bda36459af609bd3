"""Read-only validation tools: is the culprit still there, and is the pressure still on?

They run under the posture's validation rule (read-only, allowed even in a dry run)
and under two budgets per run: tool calls, and iterations (rounds of checks: the
executor's before the plan runs, the verifier's after). A tool that cannot read
says so in its answer instead of failing the stage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import probe_core

from controller.actuators.base import ActuatorError, HostEnv
from controller.actuators.process import comm_of

PSI_RESOURCES = ("cpu", "memory", "io")


class BudgetExhausted(ActuatorError):
    """Validation has spent its read-only call budget for this run."""


def process_exists(env: HostEnv, pid: int, comm: str | None = None) -> dict[str, Any]:
    now = comm_of(env.proc_root, pid)
    return {"pid": pid, "exists": now is not None and (comm is None or now == comm), "comm": now}


def psi_now(env: HostEnv, resource: str) -> dict[str, Any]:
    if resource not in PSI_RESOURCES:
        raise ActuatorError(f"psi_now: resource must be one of {', '.join(PSI_RESOURCES)}")
    psi = probe_core.read_pressure(str(env.proc_root.parent))[resource]  # type: ignore[literal-required]
    if psi is None or psi["some"] is None:
        return {"resource": resource, "available": False}
    return {"resource": resource, "available": True, "some_avg10": psi["some"]["avg10"]}


def cgroup_stats_now(env: HostEnv, cgroup: str) -> dict[str, Any]:
    if not cgroup.startswith("/") or ".." in cgroup.split("/"):
        raise ActuatorError(f"cgroup_stats_now: {cgroup!r} is not an absolute cgroup path")
    out: dict[str, Any] = {"cgroup": cgroup}
    layout = env.cgroups
    rel = cgroup.lstrip("/")
    for controller, files in (
        ("cpu", ("cpu.stat",)),
        ("memory", ("memory.current", "memory.usage_in_bytes")),
    ):
        root = layout.v1.get(controller) or layout.v2
        if root is None:
            continue
        for name in files:
            path = root / rel / name
            try:
                text = path.read_text()
            except OSError:
                continue
            if name == "cpu.stat":
                out["cpu_stat"] = {
                    k: int(v) for k, v in (line.split() for line in text.splitlines() if " " in line)
                }
            else:
                out["memory_bytes"] = int(text.strip())
            break
    out["exists"] = len(out) > 1
    return out


def socket_queue_now(env: HostEnv, port: int) -> dict[str, Any]:
    summary = probe_core.sock_diag_tcp(top_n=50, backlog_ratio=0.0)
    mine = [s for s in summary["listeners_near_backlog"] if s["sport"] == port]
    return {
        "port": port,
        "listening": bool(mine),
        "accept_queue": max((s["rqueue"] for s in mine), default=0),
        "backlog": max((s["backlog"] or 0 for s in mine), default=0),
    }


TOOLS: dict[str, Callable[..., dict[str, Any]]] = {
    "process_exists": process_exists,
    "psi_now": psi_now,
    "cgroup_stats_now": cgroup_stats_now,
    "socket_queue_now": socket_queue_now,
}


class Toolbox:
    """Calls the tools, counting against the run's budgets; every call is recorded."""

    def __init__(
        self, env: HostEnv, *, max_calls: int, max_iterations: int, used_iterations: int = 0
    ) -> None:
        self.env = env
        self.max_calls = max_calls
        self.max_iterations = max_iterations
        self.iterations = used_iterations
        self.calls: list[dict[str, Any]] = []

    def iteration(self) -> bool:
        """Start a round of checks; False when the run has used its rounds."""
        if self.iterations >= self.max_iterations:
            return False
        self.iterations += 1
        return True

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        if len(self.calls) >= self.max_calls:
            raise BudgetExhausted(f"tool-call budget of {self.max_calls} spent")
        fn = TOOLS.get(tool)
        if fn is None:
            raise ActuatorError(f"no validation tool {tool!r}; known: {', '.join(sorted(TOOLS))}")
        try:
            answer = fn(self.env, **args)
        except (OSError, ActuatorError, probe_core.ProbeError) as exc:
            answer = {"error": str(exc)}
        self.calls.append({"tool": tool, "args": args, "answer": answer})
        return answer


def checks_for(family: str, culprit: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The read-only checks that say whether a hypothesis still holds, by family."""
    out: list[tuple[str, dict[str, Any]]] = []
    pid = culprit.get("pid")
    if isinstance(pid, int):
        out.append(("process_exists", {"pid": pid, "comm": culprit.get("comm")}))
    cgroup = culprit.get("cgroup") or (culprit.get("id") if culprit.get("kind") == "cgroup" else None)
    if isinstance(cgroup, str) and cgroup.startswith("/"):
        out.append(("cgroup_stats_now", {"cgroup": cgroup}))
    resource = {"memory_pressure": "memory", "io_pressure": "io"}.get(family, "cpu")
    out.append(("psi_now", {"resource": resource}))
    if family == "listen_queue_overflow" and ":" in str(culprit.get("id")):
        port = str(culprit["id"]).rsplit(":", 1)[1]
        if port.isdigit():
            out.append(("socket_queue_now", {"port": int(port)}))
    return out
