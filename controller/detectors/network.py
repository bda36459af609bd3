"""Network detectors: TCP retransmit surges, listen-queue overflow, NIC errors and drops."""

from __future__ import annotations

from controller.detectors.base import Culprit, Finding, Params, clamp, detector, robust_z, weigh
from controller.detectors.evidence import Evidence
from controller.detectors.owners import finite

RETRANS_PER_S = 10.0
RTO_BACKOFF_SOCKETS = 5.0
NIC_BAD_PER_S = 1.0


@detector("tcp_retransmit_surge", retrans_per_s=RETRANS_PER_S, rto_backoff_sockets=RTO_BACKOFF_SOCKETS)
def tcp_retransmit_surge(ev: Evidence, p: Params) -> list[Finding]:
    latest = ev.recent("ebpf_tcp_retransmit", 3) or 0.0
    backoff = ev.recent("tcp_in_rto_backoff", 3) or 0.0
    if latest < p["retrans_per_s"] and backoff < p["rto_backoff_sockets"]:
        return []  # no surge whatever the robust z says
    z = robust_z(ev.values("ebpf_tcp_retransmit"))
    surge = latest >= p["retrans_per_s"] and (z is None or z[0] >= 4)
    if not surge and backoff < p["rto_backoff_sockets"]:
        return []
    top = ev.tables.get("top_retrans", [])
    peer = top[0] if top else None
    if peer is None:
        events = [e for e in ev.events if e.get("type") == "tcp_retransmit"]
        if events:
            peer = {"daddr": events[-1].get("daddr"), "dport": events[-1].get("dport")}
    culprit = (
        Culprit(
            "socket", f"{peer.get('daddr')}:{peer.get('dport')}", {"total_retrans": peer.get("total_retrans")}
        )
        if peer
        else Culprit("host", "network", {})
    )
    drops = ev.recent("nic_drops_per_s", 3) or 0.0
    score = clamp(0.5 + min(latest, 500) / 1000 + backoff / 40)
    contradicting = []
    if backoff < 1 and not top:
        contradicting.append("no socket in RTO backoff or retransmitting much: retransmits spread thin")
        score = weigh(score, contradicting)
    full = _full_listener(ev, peer)
    if full is not None:
        # Connects to a listener whose accept queue is full: the kernel drops the SYNs (or
        # the final ACKs) and clients retransmit. A symptom of the listen-queue overflow.
        score *= 0.6
        contradicting.append(f"retransmits go to {full}, a local listener with a full accept queue")
    return [
        Finding(
            family="tcp_retransmit_surge",
            method="robust_z" if z else "threshold",
            signal="ebpf_tcp_retransmit",
            value=latest,
            baseline=z[1] if z else None,
            threshold=p["retrans_per_s"],
            score=score,
            culprit=culprit,
            summary=f"{latest:.0f} TCP retransmits per sample, {backoff:.0f} sockets in RTO backoff",
            contradicting=contradicting,
            supporting=["ebpf_tcp_retransmit", "tcp_in_rto_backoff"] + (["nic_drops_per_s"] if drops else []),
            expected=[
                "retransmits concentrated on one peer",
                "drops on a path to it",
                "latency of that service up",
            ],
        )
    ]


def _full_listener(ev: Evidence, peer: dict[str, object] | None) -> str | None:
    if peer is None:
        return None
    for lst in ev.tables.get("listeners_near_backlog", []):
        if lst.get("sport") == peer.get("dport") and lst.get("saddr") in (peer.get("daddr"), "0.0.0.0", "::"):
            return f"{peer.get('daddr')}:{peer.get('dport')}"
    return None


@detector("listen_queue_overflow")
def listen_queue_overflow(ev: Evidence, p: Params) -> list[Finding]:
    near = ev.recent("listeners_near_backlog", 3) or 0.0
    if near < 1:
        return []
    listeners = ev.tables.get("listeners_near_backlog", [])
    if not listeners:
        return []
    worst = listeners[0]
    backlog = finite(worst.get("backlog"))
    rqueue = finite(worst.get("rqueue"))
    fill = min(1.0, rqueue / backlog) if rqueue is not None and backlog else 1.0
    score = clamp(0.55 + fill / 3)
    port = worst.get("sport")
    contradicting = []
    waiting = any(e.get("type") == "tcp_retransmit" and e.get("dport") == port for e in ev.events)
    if not waiting and (ev.recent("ebpf_tcp_retransmit", 3) or 0) < 1:
        contradicting.append("no SYN retransmits seen: no client is known to be waiting")
        score = weigh(score, contradicting)
    return [
        Finding(
            family="listen_queue_overflow",
            method="threshold",
            signal="listeners_near_backlog",
            value=near,
            baseline=None,
            threshold=1.0,
            score=score,
            culprit=Culprit(
                "socket",
                f"{worst.get('saddr')}:{worst.get('sport')}",
                {"accept_queue": worst.get("rqueue"), "backlog": worst.get("backlog")},
            ),
            summary=f"listener :{worst.get('sport')} has {worst.get('rqueue')} connections waiting"
            + (f" of a backlog of {backlog:.0f}" if backlog else ""),
            supporting=["listeners_near_backlog"],
            contradicting=contradicting,
            expected=[
                "TcpExt ListenOverflows and ListenDrops rising",
                "the accepting process saturated or stuck",
            ],
        )
    ]


@detector("nic_errors", nic_bad_per_s=NIC_BAD_PER_S)
def nic_errors(ev: Evidence, p: Params) -> list[Finding]:
    errs = ev.recent("nic_errors_per_s", 3) or 0.0
    drops = ev.recent("nic_drops_per_s", 3) or 0.0
    if errs + drops < p["nic_bad_per_s"]:
        return []
    worst, worst_bad = None, 0.0
    for i in ev.tables.get("interfaces", []):
        rates = i.get("rates") or {}
        bad = sum(
            float(rates.get(k) or 0)
            for k in ("rx_errors_per_s", "tx_errors_per_s", "rx_dropped_per_s", "tx_dropped_per_s")
        )
        if bad > worst_bad:
            worst, worst_bad = i, bad
    culprit = (
        Culprit("interface", str(worst.get("name")), {"operstate": worst.get("operstate")})
        if worst
        else Culprit("host", "network", {})
    )
    score = clamp(0.5 + (errs + drops) / 200)
    contradicting = []
    if (ev.recent("ebpf_tcp_retransmit", 3) or 0) < 1 and (ev.recent("tcp_in_rto_backoff", 3) or 0) < 1:
        contradicting.append("no TCP retransmits: the losses hurt no connection seen")
        score = weigh(score, contradicting)
    return [
        Finding(
            family="nic_errors",
            method="threshold",
            signal="nic_errors_per_s" if errs >= drops else "nic_drops_per_s",
            value=errs + drops,
            baseline=None,
            threshold=p["nic_bad_per_s"],
            score=score,
            culprit=culprit,
            summary=f"{errs:.1f} errors and {drops:.1f} drops per second on the NICs",
            supporting=[s for s, v in (("nic_errors_per_s", errs), ("nic_drops_per_s", drops)) if v > 0],
            contradicting=contradicting,
            expected=["TCP retransmits rising", "carrier changes on a flapping link"],
        )
    ]
