"""A live look at one host from JupyterLab: its hot-state window (the newest points of the
signals that fire, and key ones) and its current ranked hypotheses, redrawn every few
seconds while the view is on; what is loading shows as a progress bar.

    wb.live("node-7")                 # in a notebook: the view, refreshing every 5 s
    view = wb.live("node-7", every_s=2, signals=["cpu_busy_pct"]); view.stop()

The view stops by itself after ``max_s`` (an hour by default): a forgotten tab does not
poll a controller forever.
"""

from __future__ import annotations

import threading
import time
from html import escape
from typing import TYPE_CHECKING, Any

import pandas as pd

from controller.errors import ControllerError
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench import Workbench

MAX_PANELS = 4
MIN_EVERY_S = 1.0
MAX_S = 3600.0


def window_frame(body: dict[str, Any]) -> pd.DataFrame:
    """Tidy (ts, signal, value) of a window answer's series."""
    parts = [
        pd.DataFrame(points, columns=["ts", "value"]).assign(signal=name)
        for name, points in (body.get("series") or {}).items()
        if points
    ]
    if not parts:
        return pd.DataFrame(
            {
                "ts": pd.Series(dtype="datetime64[ns, UTC]"),
                "signal": pd.Series(dtype="object"),
                "value": pd.Series(dtype="float64"),
            }
        )
    df = pd.concat(parts, ignore_index=True)
    df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True)
    df["value"] = df["value"].astype("float64")
    return df[["ts", "signal", "value"]]


def hypotheses_html(body: dict[str, Any]) -> str:
    hyps = body.get("hypotheses") or []
    if not hyps:
        return "<p>No hypothesis: nothing fires in the window.</p>"
    rows = "".join(
        f"<tr><td>{h.get('rank')}</td><td>{escape(str(h.get('family')))}</td>"
        f"<td>{escape(str((h.get('culprit') or {}).get('id')))}</td>"
        f"<td>{float(h.get('confidence', 0)):.2f}</td>"
        f"<td>{escape(str(h.get('summary')))}</td></tr>"
        for h in hyps[:8]
    )
    return (
        "<table><tr><th>rank</th><th>family</th><th>culprit</th><th>confidence</th><th>summary</th></tr>"
        f"{rows}</table>"
    )


def headline(body: dict[str, Any]) -> str:
    w = body.get("window") or {}
    stale = {k: v for k, v in (body.get("freshness") or {}).items() if v not in ("fresh", "unavailable")}
    latest = body.get("latest_run") or {}
    parts = [
        f"<b>{escape(str(body.get('host_id')))}</b>",
        f"{w.get('samples', 0)} samples to {pd.Timestamp(w['end'], unit='s', tz='UTC'):%H:%M:%S} UTC"
        if w.get("end")
        else "no window",
        "telemetry fresh" if not stale else "not fresh: " + ", ".join(f"{k} {v}" for k, v in stale.items()),
    ]
    if latest:
        parts.append(
            f"latest run {escape(str(latest.get('run_id')))} ({latest.get('status')}, {latest.get('state')})"
        )
    if body.get("error"):
        parts.append(f"<span style='color:#c62828'>evaluation failing: {escape(str(body['error']))}</span>")
    return " · ".join(parts)


def plot_window(df: pd.DataFrame, title: str) -> Any:
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(df["signal"]))[:MAX_PANELS] or ["(no series)"]
    fig, axes = plt.subplots(len(names), 1, figsize=(9, 1.8 * len(names)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=True):
        s = df[df["signal"] == name]
        ax.plot(s["ts"], s["value"])
        ax.set_ylabel(name, fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


class LiveView:
    """The widget ``wb.live`` returns; ``refresh()`` once by hand, ``start()``/``stop()``."""

    def __init__(
        self,
        wb: Workbench,
        host_id: str,
        *,
        every_s: float = 5.0,
        signals: list[str] | None = None,
        points: int = 300,
        max_s: float = MAX_S,
        start: bool = True,
    ) -> None:
        import ipywidgets as w

        self.wb, self.host_id, self.signals, self.points = wb, host_id, signals, points
        self.every_s = max(MIN_EVERY_S, every_s)
        self.max_s = max_s
        self.body: dict[str, Any] = {}
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.head = w.HTML()
        self.progress = w.IntProgress(min=0, max=3, description="loading", layout=w.Layout(width="40%"))
        self.toggle = w.ToggleButton(description="Live", icon="refresh", value=False)
        self.plot = w.Image(format="png", layout=w.Layout(max_width="760px"))
        self.table = w.HTML()
        self.status = w.HTML()
        self.toggle.observe(lambda c: self.start() if c["new"] else self.stop(), names="value")
        self.widget = w.VBox(
            [w.HBox([self.toggle, self.progress]), self.head, self.plot, self.table, self.status]
        )
        self.refresh()
        if start:
            self.toggle.value = True

    def _step(self, n: int, what: str) -> None:
        self.progress.value, self.progress.description = n, what
        self.progress.layout.visibility = "visible" if n < self.progress.max else "hidden"

    def refresh(self) -> bool:
        """Load the window and redraw; False (and why in ``status``) when it could not."""
        from workbench.widgets import _png

        self._step(0, "window")
        try:
            body = self.wb.source.window(self.host_id, self.signals, self.points)
        except (WorkbenchError, ControllerError) as exc:
            self.status.value = f"<span style='color:#c62828'>{escape(str(exc))}</span>"
            self._step(3, "")
            return False
        self.body = body
        self._step(1, "plot")
        df = window_frame(body)
        self.head.value = headline(body)
        self.plot.value = _png(plot_window(df, f"{self.host_id}: the newest {self.points} points"))
        self._step(2, "hypotheses")
        self.table.value = hypotheses_html(body)
        self.refreshes += 1
        self.status.value = f"refreshed {time.strftime('%H:%M:%S')}" + (
            f", every {self.every_s:g} s" if self._thread is not None else ""
        )
        self._step(3, "")
        return True

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        began = time.monotonic()

        def loop() -> None:
            while not self._stop.wait(self.every_s):
                if time.monotonic() - began > self.max_s:
                    self.status.value = f"stopped after {self.max_s:g} s; press Live to go on"
                    break
                self.refresh()
            self._thread = None
            self.toggle.value = False

        self._thread = threading.Thread(target=loop, name=f"live-{self.host_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.every_s + 5)
        self._thread = None

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
