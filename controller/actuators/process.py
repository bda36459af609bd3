"""Process actuators: renice and ionice (safe_reversible), SIGTERM (impacting), SIGKILL
(destructive). Nice and IO priority are per thread on Linux, so both change, and
restore, every thread of the process. A plan names the process by pid and comm: a
pid that now belongs to another program is refused, never acted on."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import signal
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from controller.actuators.base import Actuator, ActuatorError, Applied, Params, actuator

MAX_THREADS = 4096
MAX_DIFFERING = 32  # rollback data keeps the threads whose value differed from the main thread's
# ioprio_set/ioprio_get: the C library has no wrapper, and Python's os module none either.
_IOPRIO_SYSCALLS = {"x86_64": (251, 252), "aarch64": (30, 31)}
IOPRIO_WHO_PROCESS = 1
IOPRIO_CLASSES = {0: "none", 1: "realtime", 2: "best-effort", 3: "idle"}
IOPRIO_CLASS_IDS = {v: k for k, v in IOPRIO_CLASSES.items()}


class ProcessParams(Params):
    pid: int = Field(gt=1)  # never init
    comm: str | None = Field(default=None, max_length=64)


class ReniceParams(ProcessParams):
    nice: int = Field(ge=-20, le=19)


class IoniceParams(ProcessParams):
    io_class: Literal["idle", "best-effort", "realtime"] = Field(alias="class")
    level: int = Field(default=4, ge=0, le=7)


def comm_of(proc: Path, pid: int) -> str | None:
    try:
        return (proc / str(pid) / "comm").read_text().rstrip("\n")
    except OSError:
        return None


def check_target(proc: Path, p: ProcessParams) -> str:
    comm = comm_of(proc, p.pid)
    if comm is None:
        raise ActuatorError(f"process {p.pid} does not exist")
    if p.comm is not None and comm != p.comm:
        raise ActuatorError(
            f"pid {p.pid} is now {comm!r}, not {p.comm!r}: the process the plan named is gone"
        )
    return comm


def threads_of(proc: Path, pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(proc / str(pid) / "task"))[:MAX_THREADS]
    except OSError:
        return []


def _ioprio(op: int, *args: int) -> int:
    machine = platform.machine()
    if machine not in _IOPRIO_SYSCALLS:
        raise ActuatorError(f"ionice: no ioprio syscall number known for {machine}")
    libc = ctypes.CDLL(None, use_errno=True)
    rc = int(libc.syscall(_IOPRIO_SYSCALLS[machine][op], *args))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return rc


def get_ioprio(tid: int) -> tuple[str, int]:
    value = _ioprio(1, IOPRIO_WHO_PROCESS, tid)
    return IOPRIO_CLASSES.get(value >> 13, "none"), value & 0x1FFF


def set_ioprio(tid: int, io_class: str, level: int) -> None:
    _ioprio(0, IOPRIO_WHO_PROCESS, tid, (IOPRIO_CLASS_IDS[io_class] << 13) | level)


def compact(pid: int, old: dict[str, Any]) -> dict[str, Any]:
    """Rollback data that stays small for a process of thousands of threads: the main
    thread's old value, and the few threads whose value differed from it."""
    main = old.get(str(pid), next(iter(old.values()), None))
    differing = {tid: v for tid, v in old.items() if v != main}
    return {"pid": pid, "value": main, "differing": dict(list(differing.items())[:MAX_DIFFERING])}


def restore_values(proc: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Every thread's old value, from compact rollback data."""
    pid = int(data["pid"])
    values: dict[str, Any] = {str(t): data["value"] for t in threads_of(proc, pid) or [pid]}
    values.update({t: v for t, v in data["differing"].items() if t in values})
    return values


def _os_error(action: str, pid: int, exc: OSError) -> ActuatorError:
    hint = " (needs CAP_SYS_NICE or the same user)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
    return ActuatorError(f"{action} of process {pid} failed: {exc.strerror}{hint}")


@actuator
class Renice(Actuator):
    name = "renice"
    safety_class = "safe_reversible"
    params_model = ReniceParams
    reversible = True

    def describe(self, p: ReniceParams) -> str:
        return f"set the nice value of every thread of pid {p.pid} ({p.comm or '?'}) to {p.nice}"

    def probe(self, p: ReniceParams) -> dict[str, Any]:
        comm = check_target(self.env.proc_root, p)
        try:
            return {"pid": p.pid, "comm": comm, "nice": os.getpriority(os.PRIO_PROCESS, p.pid)}
        except OSError as exc:
            raise _os_error("reading the nice value", p.pid, exc) from None

    def desired(self, p: ReniceParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"nice": p.nice}

    def apply(self, p: ReniceParams, before: dict[str, Any]) -> Applied:
        old: dict[str, int] = {}
        try:
            for tid in threads_of(self.env.proc_root, p.pid) or [p.pid]:
                try:
                    old[str(tid)] = os.getpriority(os.PRIO_PROCESS, tid)
                    os.setpriority(os.PRIO_PROCESS, tid, p.nice)
                except ProcessLookupError:
                    continue  # the thread exited mid-walk
        except OSError as exc:
            raise _os_error("renice", p.pid, exc) from None
        return Applied(self.probe(p), compact(p.pid, old))

    def rollback(self, p: ReniceParams, data: dict[str, Any]) -> dict[str, Any]:
        check_target(self.env.proc_root, p)
        for tid, nice in restore_values(self.env.proc_root, data).items():
            try:
                os.setpriority(os.PRIO_PROCESS, int(tid), int(nice))
            except ProcessLookupError:
                continue
            except OSError as exc:
                raise _os_error("restoring the nice value", p.pid, exc) from None
        return self.probe(p)


@actuator
class Ionice(Actuator):
    name = "ionice"
    safety_class = "safe_reversible"
    params_model = IoniceParams
    reversible = True

    def describe(self, p: IoniceParams) -> str:
        return f"set the IO class of every thread of pid {p.pid} ({p.comm or '?'}) to {p.io_class} {p.level}"

    def probe(self, p: IoniceParams) -> dict[str, Any]:
        comm = check_target(self.env.proc_root, p)
        try:
            cls, level = get_ioprio(p.pid)
        except OSError as exc:
            raise _os_error("reading the IO priority", p.pid, exc) from None
        return {"pid": p.pid, "comm": comm, "io_class": cls, "level": level}

    def desired(self, p: IoniceParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"io_class": p.io_class, "level": p.level}

    def apply(self, p: IoniceParams, before: dict[str, Any]) -> Applied:
        old: dict[str, list[Any]] = {}
        try:
            for tid in threads_of(self.env.proc_root, p.pid) or [p.pid]:
                try:
                    old[str(tid)] = list(get_ioprio(tid))
                    set_ioprio(tid, p.io_class, p.level)
                except ProcessLookupError:
                    continue
        except OSError as exc:
            raise _os_error("ionice", p.pid, exc) from None
        return Applied(self.probe(p), compact(p.pid, old))

    def rollback(self, p: IoniceParams, data: dict[str, Any]) -> dict[str, Any]:
        check_target(self.env.proc_root, p)
        for tid, (cls, level) in restore_values(self.env.proc_root, data).items():
            try:
                # "none" is the kernel's default: IO priority follows the nice value again.
                set_ioprio(int(tid), cls, level if cls != "none" else 0)
            except ProcessLookupError:
                continue
            except OSError as exc:
                raise _os_error("restoring the IO priority", p.pid, exc) from None
        return self.probe(p)


class _Signal(Actuator):
    sig: signal.Signals
    wait_s = 2.0  # how long apply waits to see the process go

    def describe(self, p: ProcessParams) -> str:
        return f"send {self.sig.name} to pid {p.pid} ({p.comm or '?'})"

    def probe(self, p: ProcessParams) -> dict[str, Any]:
        comm = comm_of(self.env.proc_root, p.pid)
        alive = comm is not None and (p.comm is None or comm == p.comm)
        return {"pid": p.pid, "alive": alive}

    def desired(self, p: ProcessParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"alive": False}

    def apply(self, p: ProcessParams, before: dict[str, Any]) -> Applied:
        check_target(self.env.proc_root, p)
        try:
            os.kill(p.pid, self.sig)
        except ProcessLookupError:
            pass  # gone already: the state wanted
        except OSError as exc:
            raise _os_error(self.sig.name, p.pid, exc) from None
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline and self.probe(p)["alive"]:
            time.sleep(0.05)
        return Applied(self.probe(p), None)


class SignalParams(ProcessParams):
    pass


@actuator
class Sigterm(_Signal):
    name = "sigterm"
    safety_class = "impacting"
    params_model = SignalParams
    sig = signal.SIGTERM


@actuator
class Sigkill(_Signal):
    name = "sigkill"
    safety_class = "destructive"
    params_model = SignalParams
    sig = signal.SIGKILL
