"""Evidence timelines (matplotlib): the signals of a run with the anomaly window, the
time of each change and the verification window marked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# No backend chosen here: a notebook's inline backend draws, headless runs get Agg.
import matplotlib.pyplot as plt
import pandas as pd

if TYPE_CHECKING:
    from workbench import Workbench

MAX_PANELS = 4


def marks(chain: list[dict[str, Any]], evidence: pd.DataFrame) -> dict[str, Any]:
    """Where the anomaly was seen, when the host was changed, and the window verified."""
    out: dict[str, Any] = {"anomaly": None, "actions": [], "verification": None, "signals": []}
    findings: list[dict[str, Any]] = next(
        (a["payload"]["findings"] for a in chain if a["kind"] == "anomaly_finding"), []
    )
    for f in findings[:MAX_PANELS]:
        if f["signal"] not in out["signals"]:
            out["signals"].append(f["signal"])
    if findings:
        f = findings[0]
        series = evidence[(evidence["signal"] == f["signal"]) & (evidence["window"] == "run")]
        over = series[series["value"] >= f["threshold"]] if f.get("threshold") is not None else series.tail(1)
        if not over.empty:
            out["anomaly"] = (over["ts"].min(), series["ts"].max())
    for a in chain:
        if a["kind"] == "execution_result":
            out["actions"] = [
                (pd.Timestamp(r["applied_at"], unit="s", tz="UTC"), r["action"])
                for r in a["payload"].get("results", [])
                if r.get("applied_at")
            ]
        if a["kind"] == "verification_result" and a["payload"].get("after", {}).get("from"):
            start = pd.Timestamp(a["payload"]["after"]["from"], unit="s", tz="UTC")
            after = evidence[evidence["window"] == "after"]
            out["verification"] = (start, after["ts"].max() if not after.empty else start)
    return out


def plot_evidence(
    evidence: pd.DataFrame, chain: list[dict[str, Any]], signals: list[str] | None = None, title: str = ""
) -> Any:
    m = marks(chain, evidence)
    names = (signals or m["signals"] or sorted(evidence["signal"].unique().tolist()))[:MAX_PANELS]
    fig, axes = plt.subplots(
        max(1, len(names)), 1, figsize=(10, 2.4 * max(1, len(names))), sharex=True, squeeze=False
    )
    for ax, name in zip(axes[:, 0], names, strict=False):
        for window, style in (("run", "-"), ("after", "--")):
            s = evidence[(evidence["signal"] == name) & (evidence["window"] == window)]
            if not s.empty:
                ax.plot(s["ts"], s["value"], style, label=f"{name} ({window})")
        if m["anomaly"] is not None:
            ax.axvspan(*m["anomaly"], color="tab:red", alpha=0.12, label="anomaly")
        for at, action in m["actions"]:
            ax.axvline(at, color="tab:purple", linewidth=1.5, label=f"action: {action}")
        if m["verification"] is not None:
            ax.axvspan(*m["verification"], color="tab:green", alpha=0.12, label="verification")
        ax.set_ylabel(name)
        ax.legend(loc="upper left", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_run(wb: Workbench, run_id: str, signals: list[str] | None = None) -> Any:
    chain = wb.run(run_id)["chain"]
    return plot_evidence(wb.evidence(run_id), chain, signals, title=run_id)


def plot_fleet(heat: pd.DataFrame, radius: dict[str, Any], run_id: str) -> Any:
    """Hosts by time: each member's signal, scaled per host (a host's own range), so hosts
    that degrade together show as one band whatever their units."""
    fig, ax = plt.subplots(figsize=(10, 0.35 * max(4, len(heat)) + 1.2))
    if heat.empty:
        ax.set_title(f"{run_id}: no member signals in its evidence")
        return fig
    lo, hi = heat.min(axis=1), heat.max(axis=1)
    scaled = heat.sub(lo, axis=0).div((hi - lo).where(hi > lo, 1.0), axis=0)
    ax.imshow(scaled.to_numpy(dtype=float), aspect="auto", interpolation="nearest", cmap="magma")
    ax.set_yticks(range(len(heat)), [str(h) for h in heat.index])
    step = max(1, len(heat.columns) // 8)
    ax.set_xticks(
        range(0, len(heat.columns), step),
        [pd.Timestamp(t).strftime("%H:%M:%S") for t in heat.columns[::step]],
    )
    zones = ", ".join(radius.get("zones") or []) or "no zone"
    share = radius.get("cluster_share", radius.get("share_of_known"))
    ax.set_title(
        f"{run_id}: {radius.get('hosts', len(heat))} hosts, {zones}"
        + (f", {share:.0%} of the hosts known" if isinstance(share, float) else "")
    )
    fig.tight_layout()
    return fig
