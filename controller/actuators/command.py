"""run_command: the runbook commands an operator lists in ``execution.commands``, and
nothing else.

A command is an argv, never a shell line. Its first element is an absolute path and
its later ones may hold ``{placeholder}`` fields the planner fills in from the run's
culprit; an argv runs only when it matches one listed command element by element,
each placeholder standing for one plain value (letters, digits, ``_.:/@+=-``; not
starting with ``-`` or ``.``, no ``..``), so a pod name can never become a flag or a
second command. It runs with no stdin, in its own session, in ``/``, with only the
environment its settings give, under its own timeout (the whole process group is
killed past it), keeping the last 4 KiB of what it printed.

Impacting, with no rollback: the controller cannot tell what an arbitrary command
changed, so it cannot undo it or settle an intent whose result was lost (``unknown``,
never run again). Listing a command is the operator's opt-in to running it without
one; ``allow_impacting``, approval and dry run still apply.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from controller.actuators.base import Actuator, ActuatorError, Applied, Params, actuator

if TYPE_CHECKING:
    from controller.config import CommandSettings

OUTPUT_TAIL_BYTES = 4096
MAX_ARGV_CHARS = 1024  # a filled-in argv, in all: proposals and plans are compact artifacts
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DNS = r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?"
# What each placeholder's value may be: the narrowest shape its real values have. None may
# start with '-' (a flag), '@' or '+' (a response file, an option to some tools), none holds
# '=' (an assignment to kubectl label/annotate/set env) or a space; only a cgroup is a path.
VALUES: dict[str, str] = {
    "host_id": r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
    "node": _DNS,
    "namespace": r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?",
    "pod": _DNS,
    "container": r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?",
    "workload": _DNS,
    "workload_kind": r"[A-Z][A-Za-z]{0,62}",
    "pid": r"[1-9][0-9]{0,9}",
    "comm": r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}",  # any local user names their own process
    "cgroup": r"/(?:[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,254}/?){0,32}",
    "family": r"[a-z][a-z0-9_]{0,47}",
}
_FIELD = re.compile(r"\{([a-z_]+)\}")


def safe_value(name: str, value: object) -> str | None:
    """``value`` as the placeholder ``name``'s one argv field, or None when it is not of that
    placeholder's shape or could be read as something else ('..' anywhere, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or name not in VALUES:
        return None
    text = str(value)
    if ".." in text or not re.fullmatch(VALUES[name], text):
        return None
    return text


def render(argv: list[str], values: Mapping[str, object]) -> list[str] | None:
    """The template with its placeholders filled, or None when one has no safe value (or the
    result is one the gate would not take: the two accept the same argvs)."""
    out = []
    for arg in argv:
        missing = False

        def fill(m: re.Match[str]) -> str:
            nonlocal missing
            v = safe_value(m.group(1), values.get(m.group(1)))
            if v is None:
                missing = True
                return ""
            return v

        out.append(_FIELD.sub(fill, arg))
        if missing:
            return None
    return out if matches(out, argv) else None


def _pattern(template: str) -> re.Pattern[str]:
    parts, pos = [], 0
    for m in _FIELD.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append(f"(?:{VALUES[m.group(1)]})")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts) + r"\Z")


def matches(argv: list[str], template: list[str]) -> bool:
    """Whether ``argv`` is ``template`` with each placeholder one value of its shape."""
    if sum(len(a) for a in argv) > MAX_ARGV_CHARS or len(argv) != len(template):
        return False
    for a, t in zip(argv, template, strict=True):
        if _pattern(t).match(a) is None:
            return False
        if _FIELD.search(t) and ".." in a and ".." not in _FIELD.sub("", t):
            return False  # a placeholder's value made a '..' (a value ending in '.' before '.')
    return True


def environment(rule: CommandSettings, inherited: Mapping[str, str]) -> dict[str, str]:
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
    env |= {k: inherited[k] for k in rule.pass_env if k in inherited}
    return env | rule.env


@dataclass(frozen=True)
class Finished:
    status: int
    output_tail: str
    output_bytes: int
    duration_s: float


class CommandFailed(ActuatorError):
    """A command that ran and failed (a non-zero exit, killed past its timeout): it may have
    done part of its work, so it is never run again for the same step; ``after`` holds what it
    printed."""

    may_have_changed = True

    def __init__(self, message: str, after: dict[str, Any]) -> None:
        super().__init__(message)
        self.after = after


def run_argv(argv: list[str], env: dict[str, str], timeout_s: float) -> Finished:
    """Run argv to its end or its timeout, holding no more than the last OUTPUT_TAIL_BYTES of
    its output; past the timeout its whole process group is killed."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise ActuatorError(f"cannot start {argv[0]}: {exc.strerror}") from exc
    assert proc.stdout is not None
    fd, tail, total = proc.stdout.fileno(), bytearray(), 0
    poller = select.poll()  # not select(): a busy controller's fds run past FD_SETSIZE
    poller.register(fd, select.POLLIN)
    deadline = start + timeout_s
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandFailed(
                    f"timed out after {timeout_s} s and was killed; it may have done part of its work",
                    {
                        "exit_status": None,
                        "output_tail": tail.decode("utf-8", "replace"),
                        "output_bytes": total,
                        "duration_s": round(time.monotonic() - start, 3),
                    },
                )
            if poller.poll(min(remaining, 0.1) * 1000):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # EOF: every holder of the pipe is gone
                total += len(chunk)
                tail += chunk
                del tail[:-OUTPUT_TAIL_BYTES]
            if proc.poll() is not None:
                # The command itself is done: take what it wrote before it left (bounded: a
                # child it left behind may write on), and what it left goes with its group.
                for _ in range(64):
                    if not poller.poll(0):
                        break
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    total += len(chunk)
                    tail += chunk
                    del tail[:-OUTPUT_TAIL_BYTES]
                break
        status = proc.wait()
    finally:
        # The whole group: past the timeout, and whatever the command left running behind it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return Finished(status, tail.decode("utf-8", "replace"), total, round(time.monotonic() - start, 3))


class RunCommandParams(Params):
    command: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    argv: list[str] = Field(min_length=1, max_length=16)
    # The listed command's digest when it was planned: a command changed since (its env, its
    # scope, anything) is not the one approved, and does not run.
    rule: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


@actuator
class RunCommand(Actuator):
    name = "run_command"
    safety_class = "impacting"
    params_model = RunCommandParams

    def rule(self, command: str) -> CommandSettings:
        for rule in self.env.commands:
            if rule.name == command:
                return rule
        raise ActuatorError(f"run_command: {command!r} is not in execution.commands; nothing else runs")

    def validate(self, params: dict[str, Any]) -> Params:
        p = super().validate(params)
        assert isinstance(p, RunCommandParams)
        rule = self.rule(p.command)
        if not matches(p.argv, rule.argv):
            raise ActuatorError(
                f"run_command: {shlex.join(p.argv)[:200]!r} does not match {p.command!r} "
                f"({shlex.join(rule.argv)[:200]}); nothing else runs"
            )
        if p.rule != rule.digest():
            raise ActuatorError(
                f"run_command: {p.command!r} in execution.commands changed since it was planned "
                "(its argv, environment or scope); the approved command is not the listed one"
            )
        return p

    def describe(self, p: RunCommandParams) -> str:
        return f"run {shlex.join(p.argv)} (the runbook command {p.command})"

    def probe(self, p: RunCommandParams) -> dict[str, Any]:
        exe = p.argv[0]
        if not os.access(exe, os.X_OK):
            raise ActuatorError(f"run_command: {exe} is not an executable file here")
        return {"command": p.command, "executable": exe}

    def apply(self, p: RunCommandParams, before: dict[str, Any]) -> Applied:
        rule = self.rule(p.command)
        try:
            done = run_argv(p.argv, environment(rule, os.environ), rule.timeout_s)
        except CommandFailed as exc:  # it ran, and was killed: what it printed stays with it
            raise CommandFailed(f"run_command: {p.command} {exc}", exc.after) from None
        after = {
            "exit_status": done.status,
            "output_tail": done.output_tail,
            "output_bytes": done.output_bytes,
            "duration_s": done.duration_s,
        }
        if done.status != 0:
            last = done.output_tail.strip().splitlines()[-1:] or [""]
            raise CommandFailed(
                f"run_command: {p.command} exited with status {done.status}: {last[0][:200]}"
                " (it may have done part of its work)",
                after,
            )
        return Applied(after, None)
