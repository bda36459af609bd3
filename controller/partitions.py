"""Who writes which hosts: every host with one leader, or the bus's partitions shared by replicas.

Hosts hash to ``bus.partitions`` partitions (collector/wire.py ``partition_of``). A host's
ledger rows, hot state and workflow live with its partition's owner; ingest anywhere else
is answered 503 with the owner's URL, as a follower answers with the leader's.

``LeaderOwnership`` is the single writer's case (SQLite, or PostgreSQL without the bus):
the leader owns every partition, a follower none.

``PartitionLeases`` is the fleet's (PostgreSQL with the bus on). Each replica keeps one
dedicated PostgreSQL session and, on it:

- its **member lock** (an advisory lock ``(member namespace, lock_id)``) and a row in
  ``controller_members`` it refreshes every ``ha.poll_interval_s``: a replica is alive while
  PostgreSQL holds that lock for it (a killed process's session ends at once) and its
  heartbeat, on PostgreSQL's clock, is younger than ``ha.lease_s`` (a hung one stops
  refreshing);
- one **partition lock** ``(partition namespace, p)`` per partition it owns.

Every poll, each replica computes the same assignment from the live members (rendezvous
hashing capped at ceil(P / members), so a join or a death moves only about a member's
share), releases the partitions no longer its own (its consumers stop first), and tries
the locks of those now its own. The locks are the truth: two replicas never hold one
partition, whatever their views of the membership. A partition whose lock is held by a
session that is not a live member's (a replica hung past the lease) is fenced: its holder's
session is terminated, which releases the lock.

Why PostgreSQL advisory locks and not JetStream KV with a TTL: the ledger and the runs a
partition's owner writes are already in PostgreSQL, so the lease and the data it guards
fail together (a replica cut off from PostgreSQL can write neither), a killed replica's
locks go the moment its session does rather than when a TTL runs out, and one store fewer
has to be reasoned about when the two disagree.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from collector.wire import partition_of
from controller.leader import Leadership
from controller.store import members as sql

log = logging.getLogger(__name__)
Parts = frozenset[int]


class Ownership(Protocol):
    sharded: bool
    partitions: int
    on_acquire: Callable[[Parts], None] | None
    on_release: Callable[[Parts], None] | None
    on_released: Callable[[Parts], None] | None

    def owned(self) -> Parts: ...
    def epoch(self, partition: int) -> int: ...
    def owns_host(self, host_id: str) -> bool: ...
    def owner_url(self, host_id: str) -> str | None: ...
    def admits(self) -> bool: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def assign(members: Sequence[str], partitions: int) -> dict[int, str]:
    """Pure: partition -> member. Each partition goes to the member ranking it highest
    (sha256 of member and partition) that still has room under ceil(P / members): every
    replica computing it from the same members gets the same answer, the shares differ by
    at most one, and a member joining or leaving moves about one share."""
    if not members:
        return {}
    names = sorted(set(members))
    cap = math.ceil(partitions / len(names))
    load: Counter[str] = Counter()
    out: dict[int, str] = {}
    for p in range(partitions):
        ranked = sorted(names, key=lambda m: hashlib.sha256(f"{m}|{p}".encode()).digest(), reverse=True)
        for m in ranked:
            if load[m] < cap:
                out[p] = m
                load[m] += 1
                break
    return out


def namespaces(lock_key: int) -> tuple[int, int]:
    """(partition locks' namespace, member locks' namespace): both positive int4, derived from
    ``ha.lock_key`` so that two fleets sharing one database do not share locks."""
    base = lock_key & 0x3FFFFFFF
    return base, base | 0x40000000


class LeaderOwnership:
    """Every partition with the leader, none with a follower."""

    sharded = False

    def __init__(self, leadership: Leadership, partitions: int) -> None:
        self.leadership = leadership
        self.partitions = partitions
        self.on_acquire: Callable[[Parts], None] | None = None
        self.on_release: Callable[[Parts], None] | None = None
        self.on_released: Callable[[Parts], None] | None = None

    def owned(self) -> Parts:
        return frozenset(range(self.partitions)) if self.leadership.is_leader else frozenset()

    def epoch(self, partition: int) -> int:
        """Changes each time the partition comes here: once per promotion."""
        return int(getattr(self.leadership, "promotions", 1))

    def owns_host(self, host_id: str) -> bool:
        return self.leadership.is_leader

    def owner_url(self, host_id: str) -> str | None:
        return self.leadership.leader_url

    def admits(self) -> bool:
        """Whether ingest may read a body here at all (a follower answers before reading)."""
        return self.leadership.is_leader

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"mode": "leader", "partitions": self.partitions, "owned": len(self.owned())}


@dataclass
class Member:
    node_id: str
    url: str | None
    lock_id: int
    age_s: float  # since its last heartbeat, on PostgreSQL's clock
    alive: bool
    pid: int | None = None  # its lease session's backend
    owned: list[int] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


DETAIL_MAX = 64 << 10  # a member's detail as stored (JSON): past it, only the counts


class PartitionLeases:
    """The bus's partitions shared by live replicas under PostgreSQL advisory locks."""

    sharded = True

    def __init__(
        self,
        dsn: str,
        *,
        node_id: str,
        url: str | None,
        partitions: int,
        lock_key: int,
        poll_s: float,
        lease_s: float,
        detail: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dsn = dsn
        self.node_id = node_id
        self.url = url
        self.partitions = partitions
        self.ns_part, self.ns_member = namespaces(lock_key)
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.detail = detail or dict
        self.clock = clock
        self.on_acquire: Callable[[Parts], None] | None = None
        self.on_release: Callable[[Parts], None] | None = None
        self.on_released: Callable[[Parts], None] | None = None
        self._conn: Any = None
        self._lock_id = 0
        self._held: Parts = frozenset()
        self._epochs: dict[int, int] = {}  # partition -> how many times it came here
        self._ok_at = -1e18  # when a poll last refreshed our heartbeat (monotonic)
        self._owners: dict[int, str] = {}  # partition -> holder's node id (from pg_locks)
        self._members: dict[str, Member] = {}
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="partition-leases", daemon=True)
        self.acquired_total = 0
        self.released_total = 0
        self.fenced_total = 0
        self.last_error: str | None = None

    # --- what the rest of the controller asks ------------------------------------------------

    def owned(self) -> Parts:
        """What this replica holds, as of its last successful poll: nothing once that poll is
        older than most of the lease (the others may already have fenced it: it stops first)."""
        if self.clock() - self._ok_at > 0.7 * self.lease_s:
            return frozenset()
        return self._held

    def epoch(self, partition: int) -> int:
        return self._epochs.get(partition, 0)

    def owns_host(self, host_id: str) -> bool:
        return partition_of(host_id, self.partitions) in self.owned()

    def owner_url(self, host_id: str) -> str | None:
        with self._state:
            node = self._owners.get(partition_of(host_id, self.partitions))
            m = self._members.get(node) if node is not None else None
        return m.url if m is not None else None

    def admits(self) -> bool:
        return True  # decided per batch, once its host is read

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.tick()  # hold what is ours before the first request, where the others allow
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.poll_s * 3 + 10)
        self._lose_all()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                # Gone from the members at once: the others rebalance on their next poll.
                sql.forget_members(conn, [self.node_id])
                conn.close()
            except Exception:
                log.debug("closing the lease session failed", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.tick()

    # --- one poll ----------------------------------------------------------------------------

    def _connect(self) -> Any:
        import psycopg

        # A lease session must fail fast rather than hang: keepalives find a lost peer, and no
        # statement may outlast most of a poll.
        timeout_ms = max(1000, int(self.lease_s * 300))
        conn = psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=5,
            keepalives=1,
            keepalives_idle=max(1, int(self.lease_s / 2)),
            keepalives_interval=1,
            keepalives_count=3,
            options=f"-c statement_timeout={timeout_ms}",
        )
        for _ in range(16):  # a lock id of our own: another member's is taken
            lock_id = random.randrange(1, 2**31)
            if sql.try_lock(conn, self.ns_member, lock_id):
                self._lock_id = lock_id
                return conn
        conn.close()
        raise RuntimeError("no free member lock id after 16 tries")

    def tick(self) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            self._poll(self._conn)
            self.last_error = None
        except Exception as exc:  # the store away, or a callback's surprise: never a dead thread
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("partition leases: %s; giving up every partition until the store is back", exc)
            self._lose_all()
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    conn.close()
                except Exception:
                    log.debug("closing the lease session failed", exc_info=True)

    def _poll(self, conn: Any) -> None:
        facts = self.detail()
        detail = json.dumps(facts, sort_keys=True, default=str)
        if len(detail) > DETAIL_MAX:  # the counts stay; the per-cluster table goes
            detail = json.dumps({k: v for k, v in facts.items() if k in ("hosts", "lag")}, default=str)
        started = self.clock()
        sql.heartbeat(
            conn,
            node=self.node_id,
            url=self.url,
            lock_id=self._lock_id,
            owned=json.dumps(sorted(self._held)),
            detail=detail,
        )
        self._ok_at = started
        members, part_pid = self._read(conn)
        live = [m.node_id for m in members.values() if m.alive]
        if self.node_id not in live:
            live.append(self.node_id)  # our own row was just written; our lock is ours
        mine = frozenset(p for p, m in assign(live, self.partitions).items() if m == self.node_id)
        pid_node = {m.pid: m.node_id for m in members.values() if m.pid is not None}
        # Give up first: the owner-to-be takes it on its next poll.
        give = self._held - mine
        if give:
            self._give_up(conn, give)
        take = set()
        for p in sorted(mine - self._held):
            if sql.try_lock(conn, self.ns_part, p):
                take.add(p)
                continue
            holder = part_pid.get(p)
            node = pid_node.get(holder) if holder is not None else None
            if holder is not None and (node is None or not members[node].alive):
                # Held by a session no live member has: a replica hung past its lease.
                log.warning("partition %d: fencing its holder (pid %s, member %s)", p, holder, node)
                try:
                    sql.terminate(conn, holder)
                    self.fenced_total += 1
                except Exception as exc:  # e.g. a role without pg_signal_backend: wait it out
                    self.last_error = f"fencing partition {p}: {exc}"
                    log.warning("partition %d: its holder could not be fenced: %s", p, exc)
        if take:
            got = frozenset(take)
            for p in got:
                self._epochs[p] = self._epochs.get(p, 0) + 1
            # Told before it is published: what it forgets (stale stream copies) is gone by the
            # time the first batch of these hosts is taken.
            if self.on_acquire is not None:
                try:
                    self.on_acquire(got)
                except Exception:
                    log.exception("taking partitions %s over failed; they are held anyway", sorted(got))
            self._held = self._held | got
            self.acquired_total += len(take)
            log.info("partitions acquired: %s", sorted(take))
        owners = {p: pid_node[pid] for p, pid in part_pid.items() if pid in pid_node and p not in give}
        with self._state:
            self._members = members
            self._owners = owners
            for p in self._held:
                self._owners[p] = self.node_id
        dead = [m.node_id for m in members.values() if not m.alive and m.age_s > max(60.0, 10 * self.lease_s)]
        if dead:
            sql.forget_members(conn, dead)

    def _read(self, conn: Any) -> tuple[dict[str, Member], dict[int, int]]:
        """(members by node id, partition -> the pid of the session holding its lock)."""
        part_pid: dict[int, int] = {}
        member_pid: dict[int, int] = {}
        for ns, obj, session in sql.locks(conn, self.ns_part, self.ns_member):
            (part_pid if ns == self.ns_part else member_pid)[obj] = session
        members: dict[str, Member] = {}
        for node, url, lock_id, age, owned, detail in sql.members(conn):
            pid = member_pid.get(lock_id)
            members[node] = Member(
                node_id=node,
                url=url,
                lock_id=lock_id,
                age_s=age,
                alive=pid is not None and age <= self.lease_s,
                pid=pid,
                owned=_ints(owned),
                detail=_obj(detail),
            )
        return members, part_pid

    def _give_up(self, conn: Any, parts: Parts) -> None:
        """Stop, unlock, then forget: ``on_release`` first waits (bounded) for what is being
        ingested there, and only then is the lock let go; ``on_released`` tidies up after."""
        self._held = self._held - parts
        if self.on_release is not None:
            try:
                self.on_release(parts)
            except Exception:
                log.exception("stopping partitions %s failed; releasing them anyway", sorted(parts))
        for p in sorted(parts):
            sql.unlock(conn, self.ns_part, p)
        self.released_total += len(parts)
        log.info("partitions released: %s", sorted(parts))
        if self.on_released is not None:
            try:
                self.on_released(parts)
            except Exception:
                log.exception("forgetting partitions %s failed", sorted(parts))

    def _lose_all(self) -> None:
        """The session is gone (or going): PostgreSQL has released every lock with it."""
        held, self._held = self._held, frozenset()
        for callback in (self.on_release, self.on_released):
            if held and callback is not None:
                try:
                    callback(held)
                except Exception:
                    log.exception("giving partitions %s up failed", sorted(held))
        with self._state:
            self._owners = {}

    def members(self) -> list[Member]:
        with self._state:
            return list(self._members.values())

    def describe(self) -> dict[str, Any]:
        with self._state:
            members = dict(self._members)
            owners = dict(self._owners)
        return {
            "mode": "partitions",
            "node_id": self.node_id,
            "partitions": self.partitions,
            "lease_s": self.lease_s,
            "owned": sorted(self.owned()),
            "owners": {str(p): owners.get(p) for p in range(self.partitions)},
            "unowned": [p for p in range(self.partitions) if p not in owners],
            "members": [
                {
                    "node_id": m.node_id,
                    "url": m.url,
                    "alive": m.alive,
                    "heartbeat_age_s": round(m.age_s, 3),
                    "owned": m.owned,
                    "rebuilding": m.detail.get("rebuilding", {}),
                    "lag": m.detail.get("lag", 0),
                }
                for m in sorted(members.values(), key=lambda m: m.node_id)
            ],
            "acquired_total": self.acquired_total,
            "released_total": self.released_total,
            "fenced_total": self.fenced_total,
            "last_error": self.last_error,
        }


def _ints(text: Any) -> list[int]:
    try:
        got = json.loads(text)
    except (TypeError, ValueError):
        return []
    return [int(x) for x in got if isinstance(x, int)] if isinstance(got, list) else []


def _obj(text: Any) -> dict[str, Any]:
    try:
        got = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return got if isinstance(got, dict) else {}
