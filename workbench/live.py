"""A live look at one host from JupyterLab: its hot-state window (the newest points of the
signals that fire, and key ones) and its current ranked hypotheses, redrawn every few
seconds while the view is on; what is loading shows as a progress bar.

    wb.live("node-7")                 # in a notebook: the view, refreshing every 5 s
    view = wb.live("node-7", every_s=2, signals=["cpu_busy_pct"]); view.stop()

The view stops by itself after ``max_s`` (an hour by default): a forgotten tab does not
poll a controller forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from html import escape
from typing import TYPE_CHECKING, Any

import pandas as pd

from controller.errors import ControllerError
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench import Workbench

log = logging.getLogger(__name__)

MAX_PANELS = 4
MIN_EVERY_S = 1.0
MAX_S = 3600.0


class Ticker:
    """A background loop that calls ``tick`` every ``every_s``: until stopped, until ``tick``
    says there is nothing more to follow (False), or ``max_s`` after it started. Each start
    has its own stop event, so a loop still inside a slow tick when it was stopped never
    runs beside the next one; a tick that raises is said (``error``), not the end of it."""

    def __init__(
        self,
        name: str,
        tick: Callable[[], bool],
        every_s: float,
        *,
        max_s: float | None = None,
        on_end: Callable[[str], None] = lambda why: None,
    ) -> None:
        self.name, self.tick, self.every_s, self.max_s, self.on_end = name, tick, every_s, max_s, on_end
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            stop = self._stop = threading.Event()
            thread = self._thread = threading.Thread(
                target=self._loop, args=(stop, time.monotonic()), name=self.name, daemon=True
            )
        thread.start()

    def _loop(self, stop: threading.Event, began: float) -> None:
        why = "stopped"
        try:
            while not stop.wait(self.every_s):
                if self.max_s is not None and time.monotonic() - began > self.max_s:
                    why = "timeout"
                    break
                try:
                    more = self.tick()
                    self.error = None
                except Exception as exc:  # a bad answer, a plot that failed: said; it goes on
                    self.error = f"{type(exc).__name__}: {exc}"[:300]
                    log.warning("%s: %s", self.name, self.error)
                    continue
                if not more:
                    why = "done"
                    break
        finally:
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread, self._stop = None, None
            if not stop.is_set():
                self.on_end(why)

    def stop(self) -> None:
        """Ends the loop without waiting for a tick in flight (it finds its own event set)."""
        with self._lock:
            if self._stop is not None:
                self._stop.set()
            self._thread, self._stop = None, None


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
    from workbench.plots import Figure

    names = list(dict.fromkeys(df["signal"]))[:MAX_PANELS] or ["(no series)"]
    fig = Figure(figsize=(9, 1.8 * len(names)))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)
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
        self.body: dict[str, Any] = {}
        self.refreshes = 0
        self.ticker = Ticker(f"live-{host_id}", self._tick, self.every_s, max_s=max_s, on_end=self._ended)
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
            f", every {self.every_s:g} s" if self.ticker.running else ""
        )
        self._step(3, "")
        return True

    def _tick(self) -> bool:
        self.refresh()
        return True

    def _ended(self, why: str) -> None:
        if why == "timeout":
            self.status.value = f"stopped after {self.ticker.max_s:g} s; press Live to go on"
        self.toggle.value = False

    def start(self) -> None:
        self.ticker.start()

    def stop(self) -> None:
        self.ticker.stop()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
