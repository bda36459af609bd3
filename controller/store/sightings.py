"""The fleet correlator's shared sightings (``fleet_sightings``, one row per host): written by
the replica that owns a host, read by the one that correlates (controller/workflow/fleet.py)."""

from __future__ import annotations

from sqlalchemy import Engine, text

UPSERT = text(
    "INSERT INTO fleet_sightings (host_id, run_id, at, body) VALUES (:h, :r, :at, :b) "
    "ON CONFLICT (host_id) DO UPDATE SET run_id = excluded.run_id, at = excluded.at, body = excluded.body"
)
FORGET = text("DELETE FROM fleet_sightings WHERE host_id = :h AND run_id = :r")
EXPIRE = text("DELETE FROM fleet_sightings WHERE at < :t")
NEWEST = text("SELECT body FROM fleet_sightings ORDER BY at DESC LIMIT :n")


def put(engine: Engine, *, host: str, run_id: str, at: float, body: str) -> None:
    with engine.begin() as conn:
        conn.execute(UPSERT, {"h": host, "r": run_id, "at": at, "b": body})


def forget(engine: Engine, *, host: str, run_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(FORGET, {"h": host, "r": run_id})


def window(engine: Engine, *, since: float, limit: int) -> list[str]:
    """The newest ``limit`` sightings' bodies since ``since``; older rows are deleted."""
    with engine.begin() as conn:
        conn.execute(EXPIRE, {"t": since})
        return [r[0] for r in conn.execute(NEWEST, {"n": limit}).all()]
