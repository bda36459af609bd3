"""POST /api/v1/ingest over real HTTP to a controller process: every refusal, and exactly once in effect."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import zstandard

from collector.agent import Agent
from collector.config import CollectorSettings
from collector.sampler import Sampler
from collector.wire import BATCH_SCHEMA

from ..collector.conftest import NO_CAPS
from .conftest import ADMIN_TOKEN, COLLECTOR_TOKEN, OPERATOR_TOKEN, ControllerProc, base_config


def batch(seq: int, host: str = "host-a", stream: str = "stream-a", **kw: Any) -> dict[str, Any]:
    now = time.time()
    return {
        "schema": BATCH_SCHEMA,
        "host_id": host,
        "boot_id": "boot-1",
        "stream_id": stream,
        "seq": seq,
        "sent_at": now,
        "snapshots": [
            {
                "ts": now,
                "interval_s": 1.0,
                "sources": {
                    "psi": {
                        "status": "ok",
                        "path": "file",
                        "reason": None,
                        "duration_s": 0.0001,
                        "data": {"cpu": {}},
                    }
                },
            }
        ],
        "dropped": {"spool_evicted": 0},
    } | kw


def post(
    c: ControllerProc,
    body: bytes,
    *,
    token: str | None = COLLECTOR_TOKEN,
    encoding: str | None = "gzip",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = dict(headers or {})
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    if encoding is not None:
        h["Content-Encoding"] = encoding
    return httpx.post(c.url + "/api/v1/ingest", content=body, headers=h, timeout=30)


def gz(obj: dict[str, Any]) -> bytes:
    return gzip.compress(msgspec.json.encode(obj))


def hot_samples(c: ControllerProc) -> int:
    samples: int = c.get("/api/v1/status").json()["hot_state"]["samples"]
    return samples


@pytest.fixture
def ctl(controller_factory: Callable[..., ControllerProc], tmp_path: Path) -> ControllerProc:
    cfg = base_config(
        tmp_path / "data", ingest={"max_body_bytes": 1 << 20, "max_decompressed_bytes": 4 << 20}
    )
    return controller_factory(cfg)


def test_accept_duplicate_and_gap(ctl: ControllerProc) -> None:
    r = post(ctl, gz(batch(1)))
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    assert post(ctl, gz(batch(1))).json()["status"] == "duplicate"
    assert post(ctl, gz(batch(5))).json()["status"] == "accepted"  # a gap: accepted, and recorded
    assert post(ctl, gz(batch(3))).json()["status"] == "accepted"  # a late one fills part of it
    assert post(ctl, gz(batch(3))).json()["status"] == "duplicate"
    status = ctl.get("/api/v1/ingest/status").json()
    (host,) = status["hosts"]
    (stream,) = host["streams"]
    assert (stream["last_seq"], stream["watermark"], stream["accepted"]) == (5, 1, 3)
    assert stream["duplicates"] == 2 and stream["gaps"] == 1
    assert host["freshness"] == {"psi": "fresh"}
    assert hot_samples(ctl) == 3  # duplicates change nothing


def test_zstd_and_identity_encodings(ctl: ControllerProc) -> None:
    raw = msgspec.json.encode(batch(1))
    assert post(ctl, zstandard.ZstdCompressor().compress(raw), encoding="zstd").json()["status"] == "accepted"
    assert post(ctl, msgspec.json.encode(batch(2)), encoding=None).json()["status"] == "accepted"


@pytest.mark.parametrize(
    ("token", "code"),
    [(None, 401), ("not-a-token-at-all-0000", 401), (OPERATOR_TOKEN, 403), (ADMIN_TOKEN, 200)],
)
def test_tokens_and_roles(ctl: ControllerProc, token: str | None, code: int) -> None:
    assert post(ctl, gz(batch(1)), token=token).status_code == code


def test_collector_token_cannot_read(ctl: ControllerProc) -> None:
    assert ctl.get("/api/v1/status", token=COLLECTOR_TOKEN).status_code == 403
    assert ctl.get("/api/v1/status", token="nope-nope-nope-nope").status_code == 401
    assert ctl.get("/api/v1/status").status_code == 200


def test_every_refusal_leaves_nothing_behind(ctl: ControllerProc) -> None:
    cases: list[tuple[bytes, str | None, int, str]] = [
        (b"\x00garbage\xff", "gzip", 400, "bad gzip"),
        (gzip.compress(b"not json"), "gzip", 400, "not valid JSON"),
        (gzip.compress(b"\0" * (64 << 20)), "gzip", 413, "exceeds the limit"),  # a bomb: 64 MiB from ~64 KiB
        (zstandard.ZstdCompressor().compress(b"\0" * (64 << 20)), "zstd", 413, "exceeds the limit"),
        (gz(batch(1, schema="incidentlab.batch/v0")), "gzip", 400, "$.schema"),
        (gz({"schema": BATCH_SCHEMA, "seq": "one"}), "gzip", 400, "$.seq"),
        (gz(batch(1)), "br", 415, "unsupported Content-Encoding"),
        (b"x" * ((1 << 20) + 1), "gzip", 413, "over the ingest limit"),
    ]
    for body, enc, code, needle in cases:
        r = post(ctl, body, encoding=enc)
        assert r.status_code == code, (needle, r.text)
        assert needle in r.text, (needle, r.text)
    assert hot_samples(ctl) == 0
    assert ctl.get("/api/v1/ingest/status").json()["hosts"] == []
    assert httpx.get(ctl.url + "/healthz").status_code == 200  # still healthy after all that
    assert post(ctl, gz(batch(1))).json()["status"] == "accepted"


def test_invalid_batch_that_can_be_named_gets_a_rejected_ack(ctl: ControllerProc) -> None:
    r = post(ctl, gz(batch(4, snapshots=[{"ts": 1.0}])))
    assert r.status_code == 400
    ack = r.json()
    assert ack["status"] == "rejected" and ack["seq"] == 4 and "$.snapshots[0]" in ack["reason"]


def test_chunked_body_over_the_limit(ctl: ControllerProc) -> None:
    def chunks() -> Any:
        for _ in range(40):
            yield b"y" * 65536

    r = httpx.post(
        ctl.url + "/api/v1/ingest",
        content=chunks(),
        headers={"Authorization": f"Bearer {COLLECTOR_TOKEN}", "Content-Encoding": "gzip"},
        timeout=30,
    )
    assert r.status_code == 413


def test_restart_after_kill_9_still_recognises_replays(
    controller_factory: Callable[..., ControllerProc], tmp_path: Path
) -> None:
    cfg = base_config(tmp_path / "data")
    ctl = controller_factory(cfg)
    for seq in range(1, 11):
        assert post(ctl, gz(batch(seq))).json()["status"] == "accepted"
    ctl.kill9()
    ctl.start()
    assert [post(ctl, gz(batch(seq))).json()["status"] for seq in range(1, 11)] == ["duplicate"] * 10
    assert post(ctl, gz(batch(11))).json()["status"] == "accepted"


def test_the_collector_agent_ships_to_the_controller(ctl: ControllerProc, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(COLLECTOR_TOKEN)
    settings = CollectorSettings.model_validate(
        {
            "interval_s": 1.0,
            "enabled_sources": ["host", "psi", "disk"],
            "spool": {"dir": tmp_path / "spool", "fsync": "always"},
            "transport": {"url": ctl.url, "allow_http": True, "token_file": token, "max_attempts": 2},
        }
    )
    agent = Agent(settings, sampler=Sampler(settings, capabilities=NO_CAPS))
    try:
        for _ in range(3):
            agent.sample_once()
        while agent.ship_once():
            pass
        assert agent.spool.acked == 3
    finally:
        agent.close()
    (host,) = ctl.get("/api/v1/ingest/status").json()["hosts"]
    assert host["streams"][0]["accepted"] == 3
    assert set(host["freshness"]) == {"host", "psi", "disk"}
    assert host["agent"] is not None


def test_metrics_and_health(ctl: ControllerProc) -> None:
    post(ctl, gz(batch(1)))
    text = httpx.get(ctl.url + "/metrics").text
    assert 'incidentlab_ingest_requests_total{code="200"} 1.0' in text
    # A small batch is checked on the loop and stored on the pool: still measured once.
    assert "incidentlab_ingest_seconds_count 1.0" in text
    assert "incidentlab_ingest_body_bytes_total 0.0" not in text
    assert "incidentlab_leader 1.0" in text
    assert httpx.get(ctl.url + "/readyz").json() == {"status": "ok"}
