"""A load generator for the ingest bench, run as its own process so it does not share the server's GIL.

It makes its request bodies before the clock starts: batches of N snapshots
(64 KiB of JSON at 197), gzip-compressed, a new seq each, spread over H hosts.
Closed loop: C connections each send as fast as answers come back (peak rate).
Open loop: requests are due at a fixed rate whether or not earlier ones came
back; latency runs from when a request was due, so queueing counts (no
coordinated omission). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import probe_core

from collector.wire import BATCH_SCHEMA

TARGET_JSON_BYTES = 64 * 1024


def make_snapshots(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """count snapshots of plausible host telemetry, varied like real readings so gzip
    compresses them as it would real batches, padded to TARGET_JSON_BYTES in all."""
    rng = random.Random(seed)
    now = time.time()
    snaps: list[dict[str, Any]] = []
    datas: list[dict[str, Any]] = []
    for i in range(count):
        data: dict[str, Any] = {
            "cpu": {
                "util_pct": {k: round(rng.uniform(0, 100), 3) for k in ("user", "system", "iowait")},
                "ctxt_per_s": round(rng.uniform(100, 50000), 2),
            },
            "load": [round(rng.uniform(0, 8), 2) for _ in range(3)],
            "mem_available": rng.randrange(1 << 30, 1 << 34),
            "pad": "",
        }
        datas.append(data)
        snaps.append(
            {
                "ts": now - count + i,  # the past: a sample from the future is refused
                "interval_s": 1.0,
                "sources": {
                    "host": {
                        "status": "ok",
                        "path": "file",
                        "reason": None,
                        "duration_s": round(rng.uniform(0.0002, 0.002), 6),
                        "data": data,
                    }
                },
            }
        )
    size = len(msgspec.json.encode(snaps))
    per = (TARGET_JSON_BYTES - size - 300) // count  # 300: the batch's own fields
    for data in datas:
        data["pad"] = "".join(rng.choice("abcdef0123456789") for _ in range(max(0, per)))
    return snaps


def make_bodies(count: int, hosts: int, snapshots: int) -> list[bytes]:
    snaps = make_snapshots(snapshots)
    now = time.time()
    bodies = []
    seqs = [0] * hosts
    for n in range(count):
        h = n % hosts
        seqs[h] += 1
        batch = {
            "schema": BATCH_SCHEMA,
            "host_id": f"bench-host-{h:05d}",
            "boot_id": "bench-boot",
            "stream_id": "bench-stream",
            "seq": seqs[h],
            "sent_at": now,
            "snapshots": snaps,
            "events": [],
            "dropped": {"spool_evicted": 0},
        }
        bodies.append(probe_core.gzip_compress(msgspec.json.encode(batch), 6))
    return bodies


def request_bytes(url: str, token: str | None, body: bytes) -> bytes:
    parts = urlsplit(url)
    head = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Content-Type: application/json",
        "Content-Encoding: gzip",
        f"Content-Length: {len(body)}",
    ]
    if token:
        head.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str = "") -> None:
        self.reader, self.writer, self.url = reader, writer, url

    async def roundtrip(self, req: bytes) -> int:
        """The answer's status; 0 when the server closed the connection (it reconnects)."""
        try:
            self.writer.write(req)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                if line.lower() == b"connection: close":
                    status = -status  # answered, then closed: reconnect below
            await self.reader.readexactly(length)
            if status > 0:
                return status
            status = -status
        except (asyncio.IncompleteReadError, ConnectionError):
            status = 0
        self.writer.close()
        parts = urlsplit(self.url)
        self.reader, self.writer = await asyncio.open_connection(parts.hostname, parts.port)
        return status


async def connect(url: str, n: int) -> list[Conn]:
    parts = urlsplit(url)
    out = []
    for _ in range(n):
        r, w = await asyncio.open_connection(parts.hostname, parts.port)
        out.append(Conn(r, w, url))
    return out


async def closed_loop(url: str, reqs: list[bytes], concurrency: int, duration: float) -> dict[str, Any]:
    conns = await connect(url, concurrency)
    codes: dict[int, int] = {}
    it = iter(reqs)
    deadline = time.perf_counter() + duration
    done = 0

    async def worker(c: Conn) -> None:
        nonlocal done
        for req in it:
            if time.perf_counter() >= deadline:
                return
            code = await c.roundtrip(req)
            codes[code] = codes.get(code, 0) + 1
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.writer.close()
    return {
        "mode": "closed",
        "requests": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "codes": codes,
        "ran_out_of_bodies": done >= len(reqs),
    }


async def open_loop(url: str, reqs: list[bytes], rate: float, duration: float, pool: int) -> dict[str, Any]:
    conns = await connect(url, pool)
    free: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        free.put_nowait(c)
    latencies: list[float] = []
    codes: dict[int, int] = {}
    total = min(len(reqs), int(rate * duration))
    start = time.perf_counter()

    async def one(i: int) -> None:
        due = start + i / rate
        c = await free.get()
        try:
            code = await c.roundtrip(reqs[i])
        finally:
            free.put_nowait(c)
        latencies.append(time.perf_counter() - due)
        codes[code] = codes.get(code, 0) + 1

    tasks = []
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in conns:
        c.writer.close()
    lat = sorted(latencies)
    return {
        "mode": "open",
        "target_rate": rate,
        "requests": total,
        "seconds": elapsed,
        "rate": total / elapsed,
        "codes": codes,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
        "max_ms": lat[-1] * 1000,
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token")
    p.add_argument("--mode", choices=["closed", "open"], required=True)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=float, default=100)
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--snapshots", type=int, default=197)
    p.add_argument("--bodies", type=int, default=10000)
    p.add_argument(
        "--bodies-file", help="gzipped bodies made by the caller (msgspec msgpack list), sent in order"
    )
    args = p.parse_args()
    if args.bodies_file:
        bodies = msgspec.msgpack.decode(Path(args.bodies_file).read_bytes(), type=list[bytes])
    else:
        bodies = make_bodies(args.bodies, args.hosts, args.snapshots)
    reqs = [request_bytes(args.url, args.token, b) for b in bodies]
    sizes = {
        "compressed_bytes": len(bodies[0]),
        "json_bytes": len(probe_core.gzip_decompress(bodies[0], 1 << 24)),
    }
    print("ready", file=sys.stderr, flush=True)
    if args.mode == "closed":
        out = asyncio.run(closed_loop(args.url, reqs, args.concurrency, args.duration))
    else:
        out = asyncio.run(open_loop(args.url, reqs, args.rate, args.duration, args.concurrency))
    print(json.dumps(out | sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
