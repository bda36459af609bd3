"""Process actuators: renice and ionice (safe_reversible), SIGTERM (impacting), SIGKILL
(destructive). Nice and IO priority are per thread on Linux, so both change, and
restore, every thread of the process. A process is named by pid and comm, and pinned
by its start time once its state is read: a pid that now belongs to another process,
even one of the same name, is refused, never acted on."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import signal
import time
from abc import abstractmethod
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


class SignalParams(ProcessParams):
    pass


def comm_of(proc: Path, pid: int) -> str | None:
    try:
        return (proc / str(pid) / "comm").read_text().rstrip("\n")
    except OSError:
        return None


def start_time_of(proc: Path, pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, names one process."""
    try:
        text = (proc / str(pid) / "stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def check_target(proc: Path, p: ProcessParams, before: dict[str, Any] | None = None) -> str:
    """Still the named process: the same comm, and the same start time as when its state
    was read (a pid reused since, even by a program of the same name, is refused)."""
    comm = comm_of(proc, p.pid)
    if comm is None:
        raise ActuatorError(f"process {p.pid} does not exist")
    if p.comm is not None and comm != p.comm:
        raise ActuatorError(
            f"pid {p.pid} is now {comm!r}, not {p.comm!r}: the process the plan named is gone"
        )
    started = (before or {}).get("start_time")
    if started is not None and start_time_of(proc, p.pid) != started:
        raise ActuatorError(f"pid {p.pid} was reused by another process since its state was read")
    return comm


def threads_of(proc: Path, pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(proc / str(pid) / "task"))[:MAX_THREADS]
    except OSError:
        return []


def compact(pid: int, old: dict[str, Any], start_time: int | None) -> dict[str, Any]:
    """Rollback data that stays small for a process of thousands of threads: the main
    thread's old value, and the few threads whose value differed from it."""
    main = old.get(str(pid), next(iter(old.values()), None))
    differing = {tid: v for tid, v in old.items() if v != main}
    return {
        "pid": pid,
        "start_time": start_time,
        "value": main,
        "differing": dict(list(differing.items())[:MAX_DIFFERING]),
    }


def restore_values(proc: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Every thread's old value, from compact rollback data."""
    pid = int(data["pid"])
    values: dict[str, Any] = {str(t): data["value"] for t in threads_of(proc, pid) or [pid]}
    values.update({t: v for t, v in data["differing"].items() if t in values})
    return values


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
    # "none" is the kernel's default: IO priority follows the nice value again.
    _ioprio(
        0, IOPRIO_WHO_PROCESS, tid, (IOPRIO_CLASS_IDS[io_class] << 13) | (level if io_class != "none" else 0)
    )


def _os_error(action: str, pid: int, exc: OSError) -> ActuatorError:
    hint = " (needs CAP_SYS_NICE or the same user)" if exc.errno in (errno.EPERM, errno.EACCES) else ""
    return ActuatorError(f"{action} of process {pid} failed: {exc.strerror}{hint}")


class _PerThread(Actuator):
    """Set a per-thread value on every thread, all or nothing; roll back to the old values."""

    safety_class = "safe_reversible"
    reversible = True

    @abstractmethod
    def read(self, tid: int) -> Any: ...

    @abstractmethod
    def write(self, tid: int, value: Any) -> None: ...

    @abstractmethod
    def wanted(self, p: Any) -> Any:
        """The value every thread gets."""

    @abstractmethod
    def main_value(self, before: dict[str, Any]) -> Any:
        """The main thread's value in a probe's state."""

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any]:
        # Only the main thread's value is in a probe: apply records every thread's (compact()).
        return compact(before["pid"], {str(before["pid"]): self.main_value(before)}, before.get("start_time"))

    def apply(self, p: Any, before: dict[str, Any]) -> Applied:
        check_target(self.env.proc_root, p, before)
        old: dict[str, Any] = {}
        try:
            for tid in threads_of(self.env.proc_root, p.pid) or [p.pid]:
                try:
                    old[str(tid)] = self.read(tid)
                    self.write(tid, self.wanted(p))
                except ProcessLookupError:
                    continue  # the thread exited mid-walk
        except OSError as exc:
            for done, value in old.items():  # undo the threads already changed
                with contextlib.suppress(OSError):
                    self.write(int(done), value)
            raise _os_error(self.name, p.pid, exc) from None
        return Applied(self.probe(p), compact(p.pid, old, before.get("start_time")))

    def rollback(self, p: Any, data: dict[str, Any]) -> dict[str, Any]:
        check_target(self.env.proc_root, p, data)
        for tid, value in restore_values(self.env.proc_root, data).items():
            try:
                self.write(int(tid), value)
            except ProcessLookupError:
                continue
            except OSError as exc:
                raise _os_error(f"restoring {self.name}", p.pid, exc) from None
        return self.probe(p)


@actuator
class Renice(_PerThread):
    name = "renice"
    params_model = ReniceParams

    def read(self, tid: int) -> int:
        return os.getpriority(os.PRIO_PROCESS, tid)

    def write(self, tid: int, value: Any) -> None:
        os.setpriority(os.PRIO_PROCESS, tid, int(value))

    def wanted(self, p: ReniceParams) -> int:
        return p.nice

    def main_value(self, before: dict[str, Any]) -> int:
        return int(before["nice"])

    def describe(self, p: ReniceParams) -> str:
        return f"set the nice value of every thread of pid {p.pid} ({p.comm or '?'}) to {p.nice}"

    def probe(self, p: ReniceParams) -> dict[str, Any]:
        comm = check_target(self.env.proc_root, p)
        try:
            nice = self.read(p.pid)
        except OSError as exc:
            raise _os_error("reading the nice value", p.pid, exc) from None
        return {
            "pid": p.pid,
            "comm": comm,
            "start_time": start_time_of(self.env.proc_root, p.pid),
            "nice": nice,
        }

    def desired(self, p: ReniceParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"nice": p.nice}


@actuator
class Ionice(_PerThread):
    name = "ionice"
    params_model = IoniceParams

    def read(self, tid: int) -> list[Any]:
        return list(get_ioprio(tid))

    def write(self, tid: int, value: Any) -> None:
        set_ioprio(tid, value[0], int(value[1]))

    def wanted(self, p: IoniceParams) -> list[Any]:
        return [p.io_class, p.level]

    def main_value(self, before: dict[str, Any]) -> list[Any]:
        return [before["io_class"], before["level"]]

    def describe(self, p: IoniceParams) -> str:
        return f"set the IO class of every thread of pid {p.pid} ({p.comm or '?'}) to {p.io_class} {p.level}"

    def probe(self, p: IoniceParams) -> dict[str, Any]:
        comm = check_target(self.env.proc_root, p)
        try:
            cls, level = get_ioprio(p.pid)
        except OSError as exc:
            raise _os_error("reading the IO priority", p.pid, exc) from None
        start = start_time_of(self.env.proc_root, p.pid)
        return {"pid": p.pid, "comm": comm, "start_time": start, "io_class": cls, "level": level}

    def desired(self, p: IoniceParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"io_class": p.io_class, "level": p.level}


class _Signal(Actuator):
    sig: signal.Signals
    wait_s = 2.0  # how long apply waits to see the process go

    def describe(self, p: ProcessParams) -> str:
        return f"send {self.sig.name} to pid {p.pid} ({p.comm or '?'})"

    def probe(self, p: ProcessParams) -> dict[str, Any]:
        comm = comm_of(self.env.proc_root, p.pid)
        alive = comm is not None and (p.comm is None or comm == p.comm)
        return {"pid": p.pid, "alive": alive, "start_time": start_time_of(self.env.proc_root, p.pid)}

    def desired(self, p: ProcessParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"alive": False}

    def settle(self, p: ProcessParams, before: dict[str, Any], now: dict[str, Any]) -> Any:
        # Gone, or the pid now another process's: the process the intent named is not alive.
        if not now["alive"] or now.get("start_time") != before.get("start_time"):
            return "applied"
        return "not_applied"

    def apply(self, p: ProcessParams, before: dict[str, Any]) -> Applied:
        # A pidfd pins the process: checked once it is open, the signal cannot reach a successor.
        try:
            fd = os.pidfd_open(p.pid)
        except ProcessLookupError:
            return Applied({"pid": p.pid, "alive": False}, None)  # gone already: the state wanted
        except OSError as exc:
            raise _os_error(self.sig.name, p.pid, exc) from None
        try:
            check_target(self.env.proc_root, p, before)
            signal.pidfd_send_signal(fd, self.sig)
        except ProcessLookupError:
            pass
        except OSError as exc:
            raise _os_error(self.sig.name, p.pid, exc) from None
        finally:
            os.close(fd)
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline and self.probe(p)["alive"]:
            time.sleep(0.05)
        return Applied(self.probe(p), None)


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
