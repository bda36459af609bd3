"""Two controllers on one PostgreSQL: one writer, followers point at it, and a dead leader is replaced."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from collector.agent import Agent
from collector.config import CollectorSettings
from collector.sampler import Sampler

from ..collector.conftest import NO_CAPS
from .conftest import COLLECTOR_TOKEN, ControllerProc, base_config
from .test_ingest_http import batch, gz, post

pytestmark = pytest.mark.postgres


def role(c: ControllerProc) -> str:
    r: str = c.get("/api/v1/status").json()["role"]
    return r


def test_one_leader_followers_redirect_and_failover(
    controller_factory: Callable[..., ControllerProc], pg_url: str, tmp_path: Path
) -> None:
    cfg = base_config(tmp_path / "data", database_url=pg_url, ha={"poll_interval_s": 0.3})
    a = controller_factory(cfg, name="a")
    b = controller_factory(cfg, name="b")
    assert (role(a), role(b)) == ("leader", "follower")

    # A follower answers ingest with 503 and the leader's URL; reads still work there.
    r = post(b, gz(batch(1)))
    assert r.status_code == 503 and r.headers["x-incidentlab-leader"] == a.url
    assert b.get("/api/v1/ingest/status").status_code == 200

    token = tmp_path / "token"
    token.write_text(COLLECTOR_TOKEN)
    settings = CollectorSettings.model_validate(
        {
            "interval_s": 1.0,
            "enabled_sources": ["psi"],
            "spool": {"dir": tmp_path / "spool", "fsync": "always"},
            "transport": {
                "url": b.url,
                "fallback_urls": [a.url],
                "allow_http": True,
                "token_file": token,
                "max_attempts": 3,
                "backoff_base_s": 0.05,
                "backoff_max_s": 0.2,
            },
        }
    )
    agent = Agent(settings, sampler=Sampler(settings, capabilities=NO_CAPS))
    try:
        for _ in range(5):
            agent.sample_once()
        while agent.ship_once():
            pass
        assert agent.spool.acked == 5, agent.transport.stats.last_error
        assert agent.transport.url == a.url  # followed the hint

        a.kill9()
        deadline = time.monotonic() + 15
        while role(b) != "leader":
            assert time.monotonic() < deadline, "the follower did not take over"
            time.sleep(0.1)
        took_over = 15 - (deadline - time.monotonic())
        assert took_over < 5

        for _ in range(5):
            agent.sample_once()
        deadline = time.monotonic() + 20
        while agent.spool.acked < 10:
            assert time.monotonic() < deadline, agent.transport.stats.last_error
            agent.ship_once()
        assert agent.transport.url == b.url
    finally:
        agent.close()

    # No batch lost, none counted twice: the shared ledger saw 1..10 exactly once.
    with psycopg.connect(pg_url) as conn:
        ((accepted, watermark, missing),) = conn.execute(
            "SELECT accepted, watermark, missing FROM ingest_streams"
        ).fetchall()
    assert (accepted, watermark, missing) == (10, 10, 0)
    assert httpx.get(b.url + "/readyz").status_code == 200


def test_the_old_leader_comes_back_as_a_follower(
    controller_factory: Callable[..., ControllerProc], pg_url: str, tmp_path: Path
) -> None:
    cfg = base_config(tmp_path / "data", database_url=pg_url, ha={"poll_interval_s": 0.3})
    a = controller_factory(cfg, name="a")
    b = controller_factory(cfg, name="b")
    a.kill9()
    deadline = time.monotonic() + 15
    while role(b) != "leader":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    a.start()
    assert role(a) == "follower"
    r = post(a, gz(batch(1)))
    assert r.status_code == 503 and r.json()["leader"] == b.url
