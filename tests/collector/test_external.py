"""external: bounded commands; bad output is that source's error with the reason."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from collector.config import ExternalCommand
from collector.sources.external import ExternalSource

from .conftest import context_for


def run(*commands: dict[str, object]) -> tuple[str, str | None, dict[str, object]]:
    ctx = context_for(Path("/"), external=[ExternalCommand.model_validate(c) for c in commands])
    src = ExternalSource(ctx)
    r = src.sample()
    return r.status, r.reason, r.data


PY = sys.executable


def test_prometheus_and_json_commands() -> None:
    status, reason, data = run(
        {"name": "prom", "command": [PY, "-c", "print('temp{gpu=\"0\"} 70')"], "format": "prometheus"},
        {"name": "js", "command": [PY, "-c", "print('{\"a\": [1, 2]}')"], "format": "json"},
    )
    assert status == "ok" and reason is None
    assert data["results"] == {
        "prom": [{"name": "temp", "labels": {"gpu": "0"}, "value": 70.0}],
        "js": {"a": [1, 2]},
    }


def test_no_commands_is_unavailable() -> None:
    assert run()[0] == "unavailable"


def test_each_failure_is_named_and_the_good_results_kept() -> None:
    start = time.monotonic()
    status, reason, data = run(
        {"name": "good", "command": [PY, "-c", "print('{}')"], "format": "json"},
        {
            "name": "slow",
            "command": [PY, "-c", "import time; time.sleep(30)"],
            "format": "json",
            "timeout_s": 0.5,
        },
        {
            "name": "huge",
            "command": [PY, "-c", "print('x' * 5000000)"],
            "format": "json",
            "max_output_bytes": 1000,
        },
        {"name": "fails", "command": [PY, "-c", "import sys; sys.exit(3)"], "format": "json"},
        {"name": "garbage", "command": [PY, "-c", "print('{not json')"], "format": "json"},
        {"name": "badprom", "command": [PY, "-c", "print('!!')"], "format": "prometheus"},
        {
            "name": "binary",
            "command": [PY, "-c", "import sys; sys.stdout.buffer.write(b'\\xff')"],
            "format": "json",
        },
        {"name": "missing", "command": ["/nonexistent/tool"], "format": "json"},
    )
    assert time.monotonic() - start < 10
    assert status == "error"
    assert data["results"] == {"good": {}}
    assert reason is not None
    for needle in (
        "slow: timed out after 0.5 s",
        "huge: printed more than the cap of 1000 bytes",
        "fails: exited with status 3",
        "garbage: invalid JSON",
        "badprom: invalid Prometheus text",
        "binary: output is not UTF-8",
        "missing: cannot start",
    ):
        assert needle in reason
