"""Evidence timelines (matplotlib): the signals of a run with the anomaly window, the
time of each change and the verification window marked."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import pandas as pd

# Figures are made without pyplot (matplotlib.figure.Figure): no global state, so a live
# view may draw on its own thread, and a notebook shows one with display(fig).
from matplotlib.figure import Figure as _Figure

if TYPE_CHECKING:
    from workbench import Workbench

MAX_PANELS = 4


class Figure(_Figure):
    """A figure that draws itself in a notebook (``_repr_png_``) with no pyplot backend set up."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()


def anomaly_window(evidence: pd.DataFrame, finding: dict[str, Any]) -> tuple[Any, Any] | None:
    """From the first point of the finding's signal past its threshold, on the side the
    detector saw it (over, or under where low is bad), to the end of the run's window; its
    last point without a threshold."""
    series = evidence[(evidence["signal"] == finding["signal"]) & (evidence["window"] == "run")]
    limit, value = finding.get("threshold"), finding.get("value")
    if limit is None:
        over = series.tail(1)
    elif isinstance(value, int | float) and value < limit:  # low is bad (memory available)
        over = series[series["value"] <= limit]
    else:
        over = series[series["value"] >= limit]
    return None if over.empty else (over["ts"].min(), series["ts"].max())


def marks(chain: list[dict[str, Any]], evidence: pd.DataFrame) -> dict[str, Any]:
    """Where the anomaly was seen (per signal that fired), when the host was changed, and
    the window verified."""
    out: dict[str, Any] = {
        "anomaly": None,
        "anomalies": {},
        "actions": [],
        "verification": None,
        "signals": [],
    }
    findings: list[dict[str, Any]] = next(
        (a["payload"]["findings"] for a in chain if a["kind"] == "anomaly_finding"), []
    )
    for f in findings:
        if f["signal"] not in out["anomalies"]:
            out["anomalies"][f["signal"]] = anomaly_window(evidence, f)
        if f["signal"] not in out["signals"] and len(out["signals"]) < MAX_PANELS:
            out["signals"].append(f["signal"])
    if findings:
        out["anomaly"] = out["anomalies"][findings[0]["signal"]]
    # A change or a verification far from the window (a recorded window replayed days later)
    # would stretch the axis to nothing: only those near it are drawn.
    near = _near(evidence)
    for a in chain:
        if a["kind"] == "execution_result":
            out["actions"] = [
                (pd.Timestamp(r["applied_at"], unit="s", tz="UTC"), r["action"])
                for r in a["payload"].get("results", [])
                if r.get("applied_at") and near(pd.Timestamp(r["applied_at"], unit="s", tz="UTC"))
            ]
        if a["kind"] == "verification_result" and a["payload"].get("after", {}).get("from"):
            start = pd.Timestamp(a["payload"]["after"]["from"], unit="s", tz="UTC")
            after = evidence[evidence["window"] == "after"]
            if near(start):
                out["verification"] = (start, after["ts"].max() if not after.empty else start)
    return out


def _near(evidence: pd.DataFrame) -> Any:
    """Whether a time lies within the evidence's span of it (a minute at least)."""
    if evidence.empty:
        return lambda t: True
    lo, hi = evidence["ts"].min(), evidence["ts"].max()
    slack = max(hi - lo, pd.Timedelta(seconds=60))
    return lambda t: lo - slack <= t <= hi + slack


def _panel(
    ax: Any, evidence: pd.DataFrame, name: str, m: dict[str, Any], threshold: float | None = None
) -> None:
    for window, style in (("run", "-"), ("after", "--")):
        s = evidence[(evidence["signal"] == name) & (evidence["window"] == window)]
        if not s.empty:
            ax.plot(s["ts"], s["value"], style, label=f"{name} ({window})")
    anomaly = m["anomalies"].get(name, m["anomaly"])
    if anomaly is not None:
        ax.axvspan(*anomaly, color="tab:red", alpha=0.12, label="anomaly")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", linewidth=0.8, linestyle=":", label="threshold")
    for at, action in m["actions"]:
        ax.axvline(at, color="tab:purple", linewidth=1.5, label=f"action: {action}")
    if m["verification"] is not None:
        ax.axvspan(*m["verification"], color="tab:green", alpha=0.12, label="verification")
    ax.set_ylabel(name)
    ax.legend(loc="upper left", fontsize="small")


def plot_evidence(
    evidence: pd.DataFrame, chain: list[dict[str, Any]], signals: list[str] | None = None, title: str = ""
) -> Any:
    m = marks(chain, evidence)
    names = (signals or m["signals"] or sorted(evidence["signal"].unique().tolist()))[:MAX_PANELS]
    fig = Figure(figsize=(10, 2.4 * max(1, len(names))))
    axes = fig.subplots(max(1, len(names)), 1, sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=False):
        _panel(ax, evidence, name, m)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_finding(evidence: pd.DataFrame, chain: list[dict[str, Any]], finding: dict[str, Any]) -> Any:
    """One small plot of one signal that fired: its threshold, the anomaly window, each change
    and the verification window; titled with what the detector saw."""
    m = marks(chain, evidence)
    fig = Figure(figsize=(8, 2.2))
    ax = fig.subplots()
    _panel(ax, evidence, finding["signal"], m, finding.get("threshold"))
    value = finding.get("value")
    seen = f" {value:.4g}" if isinstance(value, int | float) else ""
    ax.set_title(f"{finding['family']}: {finding['signal']}{seen}", fontsize="medium")
    ax.xaxis.set_major_formatter(_clock())
    fig.tight_layout()
    return fig


def _clock() -> Any:
    import matplotlib.dates as mdates

    return mdates.DateFormatter("%H:%M:%S")  # type: ignore[no-untyped-call]


def finding_figures(wb: Workbench, run_id: str) -> list[tuple[dict[str, Any], Any]]:
    """One (finding, figure) per signal that fired, in the order the findings rank."""
    chain = wb.run(run_id)["chain"]
    findings: list[dict[str, Any]] = next(
        (a["payload"]["findings"] for a in chain if a["kind"] == "anomaly_finding"), []
    )
    evidence = wb.evidence(run_id)
    seen: set[str] = set()
    out = []
    for f in findings:
        if f["signal"] in seen or evidence[evidence["signal"] == f["signal"]].empty:
            continue
        seen.add(f["signal"])
        out.append((f, plot_finding(evidence, chain, f)))
    return out


def plot_run(wb: Workbench, run_id: str, signals: list[str] | None = None) -> Any:
    chain = wb.run(run_id)["chain"]
    return plot_evidence(wb.evidence(run_id), chain, signals, title=run_id)


def plot_fleet(heat: pd.DataFrame, radius: dict[str, Any], run_id: str) -> Any:
    """Hosts by time: each member's signal, scaled per host (a host's own range), so hosts
    that degrade together show as one band whatever their units."""
    fig = Figure(figsize=(10, 0.35 * max(4, len(heat)) + 1.2))
    ax = fig.subplots()
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
