"""Severity: how much a fault hurts, apart from how sure the analysis is of its cause.

Confidence says "this is the fault and its owner"; severity says who waits or fails
because of it: tasks stalled (PSI some/full of the resource the family loads), work
killed (OOM kills, critical XIDs), clients turned away (retransmits to a full accept
queue), connections backing off. A niced CPU hog on an idle host with PSI near 0 is a
certain cause and a low-severity finding. Levels: low, medium, high, critical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from controller.detectors.base import Finding
from controller.detectors.evidence import Evidence

LEVELS = ((0.9, "critical"), (0.67, "high"), (0.34, "medium"), (0.0, "low"))


@dataclass(frozen=True)
class Severity:
    level: str
    score: float
    why: str

    def to_dict(self) -> dict[str, object]:
        return {"level": self.level, "score": self.score, "why": self.why}


def _level(score: float) -> str:
    return next(name for floor, name in LEVELS if score >= floor)


def _stall(ev: Evidence, res: str) -> tuple[float, str]:
    """Who waits for a resource: PSI some (a share of the time some task stalled on it),
    with full (all non-idle tasks stalled) counted double."""
    some = ev.recent(f"psi_{res}_some", 3)
    full = ev.recent(f"psi_{res}_full", 3) or 0.0
    if some is None:
        return 0.4, f"no PSI for {res}: impact unknown"
    score = min(1.0, some / 60 + full / 30)
    return score, f"PSI {res} some {some:.0f}%, full {full:.0f}%"


def _cpu(ev: Evidence, f: Finding) -> tuple[float, str]:
    return _stall(ev, "cpu")


def _memory(ev: Evidence, f: Finding) -> tuple[float, str]:
    stall, why = _stall(ev, "memory")
    if "oom_kills" in f.supporting:
        return max(0.75, stall), f"processes OOM-killed; {why}"
    return stall, why


def _io(ev: Evidence, f: Finding) -> tuple[float, str]:
    stall, why = _stall(ev, "io")
    blocked = ev.recent("procs_blocked", 3) or 0.0
    return min(1.0, stall + min(blocked, 10) / 40), f"{why}, {blocked:.0f} tasks blocked"


def _fds(ev: Evidence, f: Finding) -> tuple[float, str]:
    pct = ev.recent("max_process_fd_pct", 2)
    if pct is not None and pct >= 95:
        return 0.85, f"{pct:.0f}% of its fd limit: the next accept or open fails"
    return 0.5, "fds growing: failures to come, none yet"


def _throttled(ev: Evidence, f: Finding) -> tuple[float, str]:
    pct = ev.recent("cgroup_throttled_max_pct", 3) or 0.0
    return min(1.0, pct / 80), f"throttled in {pct:.0f}% of its periods: its own work waits"


def _forks(ev: Evidence, f: Finding) -> tuple[float, str]:
    stall, why = _stall(ev, "cpu")
    return max(0.5, stall), f"the process table fills; {why}"


def _retrans(ev: Evidence, f: Finding) -> tuple[float, str]:
    backoff = ev.recent("tcp_in_rto_backoff", 3) or 0.0
    return min(1.0, 0.4 + backoff / 20), f"{backoff:.0f} sockets in RTO backoff"


def _listen(ev: Evidence, f: Finding) -> tuple[float, str]:
    if f.contradicting:
        return 0.45, "the queue is full, no client seen waiting"
    return 0.8, "clients retransmit SYNs the full queue drops: connections fail or stall"


def _nic(ev: Evidence, f: Finding) -> tuple[float, str]:
    return (0.4, "losses hurt no connection seen") if f.contradicting else (0.6, "losses on a link in use")


def _xid(ev: Evidence, f: Finding) -> tuple[float, str]:
    if f.culprit.detail.get("critical"):
        return 0.95, "a critical XID: the GPU's job has failed or will"
    return 0.4, "recoverable XIDs"


def _throughput(ev: Evidence, f: Finding) -> tuple[float, str]:
    backoff = ev.recent("tcp_in_rto_backoff", 3) or 0.0
    drops = ev.recent("nic_drops_per_s", 3) or 0.0
    if f.contradicting:
        return 0.2, "a busy link, nothing dropped, nobody backing off"
    return min(
        1.0, 0.4 + backoff / 20 + min(drops, 100) / 200
    ), f"{drops:.0f} drops/s, {backoff:.0f} sockets backing off"


def _worst_stall(ev: Evidence, f: Finding) -> tuple[float, str]:
    """The resource whose tasks wait most."""
    worst = max((_stall(ev, res) for res in ("cpu", "memory", "io")), key=lambda x: x[0])
    return max(0.35, worst[0]), worst[1]


def _gpu(score: float, why: str) -> Callable[[Evidence, Finding], tuple[float, str]]:
    return lambda ev, f: (score, why)


IMPACT: dict[str, Callable[[Evidence, Finding], tuple[float, str]]] = {
    "cpu_saturation": _cpu,
    "memory_pressure": _memory,
    "io_pressure": _io,
    "fd_exhaustion": _fds,
    "cgroup_cpu_throttling": _throttled,
    "runaway_forks": _forks,
    "tcp_retransmit_surge": _retrans,
    "listen_queue_overflow": _listen,
    "nic_errors": _nic,
    "gpu_xid": _xid,
    "gpu_ecc": _gpu(0.8, "uncorrected ECC errors: the job's results are suspect"),
    "gpu_throttling": _gpu(0.5, "slower steps for the job on it"),
    "gpu_memory_pressure_low_util": _gpu(0.3, "device memory held idle: new jobs may not fit"),
    "gpu_memory_held_idle": _gpu(0.35, "an idle process keeps the GPU from the next job"),
    "gpu_nvlink_degradation": _gpu(0.7, "every rank of a multi-GPU job waits on the slow link"),
    "input_pipeline_starvation": _gpu(0.6, "the GPU waits on the CPU: the job runs slow"),
    "stale_telemetry": _gpu(0.5, "part of the host unobserved"),
    "network_throughput": _throughput,
    "multi_resource_saturation": _worst_stall,
    "host_instability": _worst_stall,
    "anomaly": _gpu(0.3, "a signal moved; nothing known waits on it"),
}


def severity(ev: Evidence, f: Finding) -> Severity:
    fn = IMPACT.get(f.family)
    score, why = fn(ev, f) if fn is not None else (0.5, "impact not modelled for this family")
    score = round(max(0.0, min(1.0, score)), 3)
    return Severity(_level(score), score, why)
