"""A real nats-server with JetStream on a free loopback port, for the bus tests: file
storage in a directory of the test's own, so it can be stopped and started again with
what it stored (Debian's nats-server package; scripts/ensure-system.sh installs it)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NatsServer:
    def __init__(self, store: Path, max_payload: int | None = None) -> None:
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server is not installed (Debian's nats-server; make test installs it)")
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.max_payload = max_payload
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NatsServer:
        conf = self.store / "nats.conf"
        self.store.mkdir(parents=True, exist_ok=True)
        lines = [f'jetstream {{ store_dir: "{self.store / "js"}" }}']
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        conf.write_text("\n".join(lines) + "\n")
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _with_js(url: str, fn: Any) -> Any:
    import nats

    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        return await fn(nc.jetstream())
    finally:
        await nc.close()


def add_stream(
    url: str, name: str = "INCIDENTLAB", subjects: tuple[str, ...] = ("incidentlab.batches.>",)
) -> None:
    """What the controllers do: a file-stored stream over the batch subjects."""
    from nats.js.api import StorageType, StreamConfig

    async def go(js: Any) -> None:
        await js.add_stream(
            StreamConfig(name=name, subjects=list(subjects), storage=StorageType.FILE, duplicate_window=120.0)
        )

    run(_with_js(url, go))


def messages(url: str, name: str = "INCIDENTLAB") -> list[Any]:
    """Every message the stream holds, in stream order (subject, headers, data)."""

    async def go(js: Any) -> list[Any]:
        info = await js.stream_info(name)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            out.append(await js.get_msg(name, seq))
        return out

    got: list[Any] = run(_with_js(url, go))
    return got
