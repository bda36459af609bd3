"""ipywidgets for runs: a stepper through one run's stages and a browser of runs.

The logic lives in plain classes (StepperState, BrowserState) that tests drive without
a browser; the widgets only draw them and forward clicks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from controller.errors import ControllerError
from workbench import frames
from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench import Workbench

MAX_JSON = 20_000  # characters of an artifact shown before it is cut


@dataclass
class StepperState:
    """One run, one stage at a time; approve and reject only while the run awaits approval."""

    wb: Workbench
    run_id: str
    index: int = 0
    message: str = ""
    diff: pd.DataFrame | None = None
    body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.body = self.wb.run(self.run_id)
        self.index = min(self.index, max(0, len(self.chain) - 1))

    @property
    def chain(self) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = self.body["chain"]
        return chain

    @property
    def status(self) -> str:
        return str(self.body["run"]["status"])

    @property
    def stage(self) -> dict[str, Any] | None:
        return self.chain[self.index] if self.chain else None

    def can_prev(self) -> bool:
        return self.index > 0

    def can_next(self) -> bool:
        return self.index < len(self.chain) - 1

    def can_decide(self) -> bool:
        return self.status == "awaiting_approval"

    def prev(self) -> None:
        if self.can_prev():
            self.index -= 1

    def next(self) -> None:
        if self.can_next():
            self.index += 1

    def plan(self) -> dict[str, Any] | None:
        return next((a["payload"] for a in self.chain if a["kind"] == "execution_plan"), None)

    def summary(self) -> str:
        s = self.stage
        if s is None:
            return f"{self.run_id}: no artifact yet ({self.status})"
        line = frames.summary_of(s["kind"], s["payload"])
        return f"{s['stage_index'] + 1}/8 {s['kind']} [{s['status']}]: {line}"

    def json(self) -> str:
        text = json.dumps(self.stage, indent=2, sort_keys=True, default=str) if self.stage else "{}"
        return text if len(text) <= MAX_JSON else text[:MAX_JSON] + "\n... (cut)"

    def approve(self, reason: str = "", steps: list[int] | None = None) -> dict[str, Any]:
        if not self.can_decide():
            raise WorkbenchError(f"run {self.run_id} is {self.status}, not awaiting approval")
        plan = self.plan()
        assert plan is not None
        try:
            answer = self.wb.source.approve(self.run_id, plan["plan_hash"], steps, reason)
        finally:
            self.refresh()
        self.message = (
            f"approved by {answer['actor']} until {pd.Timestamp(answer['expires_at'], unit='s', tz='UTC')}"
        )
        return answer

    def reject(self, reason: str) -> dict[str, Any]:
        if not self.can_decide():
            raise WorkbenchError(f"run {self.run_id} is {self.status}, not awaiting approval")
        if not reason.strip():
            raise WorkbenchError("a rejection needs a reason")
        try:
            plan = self.plan()
            answer = self.wb.source.reject(self.run_id, reason, plan["plan_hash"] if plan else None)
        finally:
            self.refresh()
        self.message = f"rejected by {answer['actor']}: {reason}"
        return answer

    def replay(self) -> pd.DataFrame:
        self.diff = self.wb.replay(self.run_id)
        self.message = (
            "replay: no conclusion changed"
            if self.diff.empty
            else f"replay: {len(self.diff)} field(s) differ"
        )
        return self.diff


@dataclass
class BrowserState:
    """A filterable table of runs; `open` makes a stepper for one."""

    wb: Workbench
    status: str | None = None
    host: str | None = None
    family: str | None = None
    limit: int = 200

    def table(self) -> pd.DataFrame:
        df = self.wb.runs(status=self.status, host=self.host, limit=self.limit)
        if self.family:
            df = df[df["family"] == self.family]
        return df.reset_index(drop=True)

    def open(self, run_id: str) -> StepperState:
        return StepperState(self.wb, run_id)


class RunStepper:
    """Previous and next through the stages: summary, JSON and an evidence plot for each;
    Approve and Reject (with a reason) while the run awaits approval; Replay shows the diff."""

    def __init__(self, wb: Workbench, run_id: str) -> None:
        import ipywidgets as w

        self.state = StepperState(wb, run_id)
        self.w = w
        self.title = w.HTML()
        self.summary = w.HTML()
        self.detail = w.Output()
        self.plot = w.Output()
        self.prev_button = w.Button(description="Previous", icon="arrow-left")
        self.next_button = w.Button(description="Next", icon="arrow-right")
        self.reason = w.Text(placeholder="reason (required to reject)", layout=w.Layout(width="40%"))
        self.approve_button = w.Button(description="Approve", button_style="success")
        self.reject_button = w.Button(description="Reject", button_style="danger")
        self.replay_button = w.Button(description="Replay")
        self.status = w.HTML()
        self.prev_button.on_click(lambda _: self._go(self.state.prev))
        self.next_button.on_click(lambda _: self._go(self.state.next))
        self.approve_button.on_click(lambda _: self._act(lambda: self.state.approve(self.reason.value)))
        self.reject_button.on_click(lambda _: self._act(lambda: self.state.reject(self.reason.value)))
        self.replay_button.on_click(lambda _: self._act(self.state.replay))
        self.widget = w.VBox(
            [
                self.title,
                w.HBox([self.prev_button, self.next_button, self.replay_button]),
                self.summary,
                w.HBox([self.reason, self.approve_button, self.reject_button]),
                self.status,
                w.Tab(children=[self.detail, self.plot], titles=("JSON", "Evidence")),
            ]
        )
        self.render()

    def _go(self, step: Any) -> None:
        step()
        self.render()

    def _act(self, action: Any) -> None:
        try:
            action()
        except (WorkbenchError, ControllerError) as exc:
            self.state.message = f"refused: {exc}"
        self.render()

    def render(self) -> None:
        s = self.state
        self.title.value = f"<b>{s.run_id}</b> on {s.body['run']['host_id']}: {s.status}"
        self.summary.value = s.summary()
        self.status.value = s.message
        self.prev_button.disabled = not s.can_prev()
        self.next_button.disabled = not s.can_next()
        self.approve_button.disabled = self.reject_button.disabled = not s.can_decide()
        self.detail.clear_output()
        with self.detail:
            if s.diff is not None and not s.diff.empty:
                from IPython.display import display

                display(s.diff)
            print(s.json())
        self.plot.clear_output()
        with self.plot:
            import matplotlib.pyplot as plt

            try:
                fig = s.wb.plot(s.run_id)
            except (WorkbenchError, ControllerError) as exc:
                print(f"no evidence plot: {exc}")
                return
            plt.show()
            plt.close(fig)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class RunBrowser:
    """A filterable table of runs; choosing one opens its stepper below."""

    def __init__(self, wb: Workbench, **filters: Any) -> None:
        import ipywidgets as w

        self.state = BrowserState(wb, **filters)
        self.status = w.Dropdown(options=["", *frames.RUN_STATUSES], description="status")
        self.host = w.Text(description="host")
        self.table = w.Output()
        self.pick = w.Dropdown(description="run")
        self.open_button = w.Button(description="Open")
        self.stepper = w.Output()
        self.status.observe(lambda _: self.refresh(), names="value")
        self.host.observe(lambda _: self.refresh(), names="value")
        self.open_button.on_click(lambda _: self._open())
        self.widget = w.VBox(
            [
                w.HBox([self.status, self.host]),
                self.table,
                w.HBox([self.pick, self.open_button]),
                self.stepper,
            ]
        )
        self.refresh()

    def refresh(self) -> None:
        self.state.status = self.status.value or None
        self.state.host = self.host.value or None
        df = self.state.table()
        self.pick.options = list(df["run_id"])
        self.table.clear_output()
        with self.table:
            from IPython.display import display

            display(df[["run_id", "host_id", "status", "family", "culprit", "confidence", "created_at"]])

    def _open(self) -> None:
        if not self.pick.value:
            return
        self.stepper.clear_output()
        with self.stepper:
            from IPython.display import display

            display(RunStepper(self.state.wb, self.pick.value).widget)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
