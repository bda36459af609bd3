"""external: configured commands that print Prometheus text or JSON.

Each runs with its timeout and an output cap; a command that fails, overruns or
prints something unparseable makes this source ``error`` with the reason, and
the results of the other commands are kept in the same sample.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import time
from typing import Any

from collector.config import ExternalCommand
from collector.errors import CollectorError, SourceError
from collector.sources.base import PathPlan, Source, SourceContext, SourceResult
from collector.sources.registry import register

MAX_SAMPLES = 10_000  # per command per interval: a node-local exporter prints hundreds

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+(?P<ts>-?\d+))?\s*$"
)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


class ParseError(CollectorError):
    """Prometheus text that does not follow the exposition format."""


def _float(text: str) -> float:
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    return float(text)  # NaN parses as float("NaN")


def parse_prometheus_text(text: str, limit: int = MAX_SAMPLES) -> list[dict[str, Any]]:
    """Samples of the Prometheus text exposition format 0.0.4: name, labels, value."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ParseError(f"line {lineno}: not a sample: {line[:80]!r}")
        labels: dict[str, str] = {}
        raw = m.group("labels")
        if raw:
            pos = 0
            while pos < len(raw):
                lm = _LABEL.match(raw, pos)
                if lm is None:
                    raise ParseError(f"line {lineno}: bad labels: {raw[:80]!r}")
                labels[lm.group(1)] = bytes(lm.group(2), "utf-8").decode("unicode_escape")
                pos = lm.end()
        try:
            value = _float(m.group("value"))
        except ValueError:
            raise ParseError(f"line {lineno}: bad value {m.group('value')!r}") from None
        out.append(
            {
                "name": m.group("name"),
                "labels": labels,
                "value": value if math.isfinite(value) else str(value),
            }
        )
        if len(out) > limit:
            raise ParseError(f"more than {limit} samples")
    return out


def _bounded_output(cmd: ExternalCommand, proc: subprocess.Popen[bytes]) -> bytes:
    """stdout up to the cap, within the timeout; never buffers more than cap + one chunk."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + cmd.timeout_s
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SourceError(f"{cmd.name}: timed out after {cmd.timeout_s} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > cmd.max_output_bytes:
            raise SourceError(f"{cmd.name}: printed more than the cap of {cmd.max_output_bytes} bytes")
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise SourceError(f"{cmd.name}: timed out after {cmd.timeout_s} s") from None
    return bytes(buf)


def run_command(cmd: ExternalCommand) -> Any:
    try:
        proc = subprocess.Popen(
            cmd.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise SourceError(f"{cmd.name}: cannot start {cmd.command[0]!r}: {exc.strerror}") from exc
    try:
        out = _bounded_output(cmd, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    if proc.returncode != 0:
        raise SourceError(f"{cmd.name}: exited with status {proc.returncode}")
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{cmd.name}: output is not UTF-8 (byte {exc.start})") from exc
    if cmd.format == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{cmd.name}: invalid JSON: {exc.msg} at line {exc.lineno}") from exc
    try:
        return parse_prometheus_text(text)
    except ParseError as exc:
        raise SourceError(f"{cmd.name}: invalid Prometheus text: {exc}") from exc


@register
class ExternalSource(Source):
    name = "external"

    def __init__(self, ctx: SourceContext) -> None:
        super().__init__(ctx)
        self._commands = ctx.settings.external

    def plan(self) -> PathPlan:
        return PathPlan("file") if self._commands else PathPlan("none", "no external commands configured")

    def sample(self) -> SourceResult:
        if not self._commands:
            return SourceResult.unavailable("no external commands configured")
        results: dict[str, Any] = {}
        errors: list[str] = []
        for cmd in self._commands:
            try:
                results[cmd.name] = run_command(cmd)
            except SourceError as exc:
                errors.append(str(exc))
        if errors:
            return SourceResult("error", "file", "; ".join(errors), {"results": results})
        return SourceResult.ok("file", {"results": results})
