"""Peers the benchmarks and live tests measure against: Prometheus node_exporter on loopback."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a process, all threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class NodeExporter:
    pid: int
    port: int
    conn: http.client.HTTPConnection

    def scrape(self) -> str:
        self.conn.request("GET", "/metrics")
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"node_exporter answered {resp.status}")
        return body.decode()


@contextmanager
def node_exporter() -> Iterator[NodeExporter]:
    """Debian's prometheus-node-exporter with its default collectors, on a free loopback port."""
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None:
        raise RuntimeError("prometheus-node-exporter is not installed (make test and make bench install it)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("node_exporter did not start") from None
                time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            yield NodeExporter(proc.pid, port, conn)
        finally:
            conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
