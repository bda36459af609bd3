"""Controller test helpers: a real controller process on loopback, fresh PostgreSQL databases."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bench.peers import free_port

if TYPE_CHECKING:
    from controller.runtime import Runtime

COLLECTOR_TOKEN = "collector-token-0123456789"
OPERATOR_TOKEN = "operator-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789abc"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/incidentlab_test"
ROOT = Path(__file__).resolve().parents[2]


def base_config(data_dir: Path, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "host": "127.0.0.1",
        "data_dir": str(data_dir),
        "server": {"allow_http": True},
        "auth": {
            "tokens": [
                {"name": "node", "role": "collector", "token": COLLECTOR_TOKEN},
                {"name": "ops", "role": "operator", "token": OPERATOR_TOKEN},
                {"name": "root", "role": "admin", "token": ADMIN_TOKEN},
            ]
        },
    }
    cfg.update(extra)
    return cfg


class ControllerProc:
    def __init__(self, tmp: Path, config: dict[str, Any], name: str = "ctl") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = dict(config) | {"port": self.port}
        cfg.setdefault("ha", {})
        cfg["ha"] = dict(cfg["ha"]) | {"advertise_url": self.url}
        self.config_path = tmp / f"{name}-{self.port}.yaml"
        self.config_path.write_text(json.dumps(cfg))
        self.log = tmp / f"{name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.args: tuple[str, ...] = ()  # extra `serve` flags, e.g. ("--init",)

    def start(self, timeout: float = 30) -> ControllerProc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "controller.cli",
                    "serve",
                    "--config",
                    str(self.config_path),
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"controller not ready: {self.log.read_text()[-2000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path: str, token: str = OPERATOR_TOKEN) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[..., ControllerProc]]:
    started: list[ControllerProc] = []

    def make(config: dict[str, Any] | None = None, name: str = "ctl", start: bool = True) -> ControllerProc:
        c = ControllerProc(tmp_path, config or base_config(tmp_path / "data"), name)
        started.append(c)
        return c.start() if start else c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped after it."""
    import psycopg

    name = f"incidentlab_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_500.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@contextlib.contextmanager
def served_api(
    tmp_path: Path, database_url: str | None = None, **workflow: Any
) -> Iterator[tuple[httpx.Client, Runtime]]:
    """A controller app served on loopback in this process, its Runtime beside it; ``workflow``
    settings go over the defaults."""
    import threading

    import uvicorn

    from controller.app import create_app
    from controller.config import load_settings
    from controller.runtime import Runtime

    # Evaluation in this process, and nothing ingested through the API: the test decides
    # when hosts are evaluated (the engine's worker has nothing queued).
    extra = {"database_url": database_url} if database_url else {}
    settings = load_settings(
        **base_config(
            tmp_path / "data", workflow={"enabled": True, "analysis": {"workers": 0}} | workflow, **extra
        )
    )
    rt = Runtime(settings)
    rt.workflow.clock = Clock()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, rt), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client, rt
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[httpx.Client, Runtime]]:
    """A controller app served on loopback in this process, its Runtime beside it."""
    with served_api(tmp_path) as got:
        yield got
