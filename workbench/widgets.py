"""ipywidgets for runs: a stepper through one run's stages and a browser of runs.

The logic lives in plain classes (StepperState, BrowserState) that tests drive without
a browser; the widgets only draw them and forward clicks.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from html import escape
from typing import TYPE_CHECKING, Any

import pandas as pd

from controller.errors import ControllerError
from workbench import frames
from workbench.errors import WorkbenchError
from workbench.live import Ticker

if TYPE_CHECKING:
    from workbench import Workbench

MAX_JSON = 20_000  # characters of an artifact shown before it is cut


LIVE_STATUSES = ("running", "awaiting_approval", "verifying")
FOLLOW_EVERY_S = 3.0  # how often live mode asks the controller for the run again
# What each stage read, in words (its evidence refs and inputs say which window and artifacts).
READS = {
    "observation_summary": "the host's hot-state window",
    "anomaly_finding": "the window and the observation",
    "root_cause_hypothesis": "the findings, the window's tables and events",
    "remediation_proposal": "the ranked hypotheses",
    "execution_plan": "the proposal and the posture (the policy gate)",
    "execution_result": "the plan, the approvals and the host's state now",
    "verification_result": "the window after the change, against the one before",
    "incident_report": "every stage before it",
}


@dataclass
class StepperState:
    """One run, one stage at a time: what the stage read and concluded, its own signals;
    approve a chosen subset of the steps that need it, reject, roll back; follow a live run."""

    wb: Workbench
    run_id: str
    index: int = 0
    message: str = ""
    diff: pd.DataFrame | None = None
    body: dict[str, Any] = field(default_factory=dict)
    # Read once per state of the run (a click redraws, it does not fetch them again).
    _decisions: list[dict[str, Any]] | None = field(default=None, repr=False)
    _evidence: tuple[int, pd.DataFrame] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        before = (len(self.body.get("chain") or []), self.body.get("run", {}).get("status"))
        self.body = self.wb.run(self.run_id)
        if (len(self.chain), self.status) != before:
            self._decisions, self._evidence = None, None
        self.index = min(self.index, max(0, len(self.chain) - 1))

    def follow(self) -> bool:
        """Live mode's tick: read the run again and move to its newest stage when it has a new
        one. True when something changed."""
        before = (len(self.chain), self.status)
        self.refresh()
        if len(self.chain) != before[0]:
            self.index = max(0, len(self.chain) - 1)
        return bool((len(self.chain), self.status) != before)

    @property
    def chain(self) -> list[dict[str, Any]]:
        chain: list[dict[str, Any]] = self.body["chain"]
        return chain

    @property
    def status(self) -> str:
        return str(self.body["run"]["status"])

    @property
    def live(self) -> bool:
        """The run can still move: live mode has something to follow."""
        return self.status in LIVE_STATUSES

    @property
    def fleet(self) -> bool:
        return bool(self.body["run"].get("scope") == "fleet")

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

    def last(self) -> None:
        self.index = max(0, len(self.chain) - 1)

    def plan(self) -> dict[str, Any] | None:
        return next((a["payload"] for a in self.chain if a["kind"] == "execution_plan"), None)

    def approvable(self) -> list[dict[str, Any]]:
        """The plan's steps that wait for an operator: step, action, target, safety class."""
        plan = self.plan()
        if plan is None or not self.can_decide():
            return []
        waiting = set(plan.get("needs_approval", []))
        return [
            {k: s.get(k) for k in ("step", "action", "target", "safety_class")}
            for s in plan["steps"]
            if s["step"] in waiting
        ]

    def summary(self) -> str:
        s = self.stage
        if s is None:
            return f"{self.run_id}: no artifact yet ({self.status})"
        line = frames.summary_of(s["kind"], s["payload"])
        return f"{s['stage_index'] + 1}/8 {s['kind']} [{s['status']}]: {line}"

    def card(self) -> dict[str, Any]:
        """The stage as an operator reads it: what it read, what it concluded, its status
        and how sure it is."""
        s = self.stage
        if s is None:
            return {
                "title": f"no artifact yet ({self.status})",
                "status": "pending",
                "read": "",
                "concluded": "",
            }
        u = s.get("uncertainty") or {}
        windows = [
            f"{r['host_id']} {pd.Timestamp(r['start'], unit='s', tz='UTC'):%H:%M:%S}"
            f"-{pd.Timestamp(r['end'], unit='s', tz='UTC'):%H:%M:%S} UTC"
            for r in s.get("evidence_refs") or []
            if r.get("kind") == "window" and r.get("start") is not None
        ]
        inputs = {a["artifact_id"]: a["kind"] for a in self.chain}
        read = READS.get(s["kind"], "")
        named = [inputs.get(i, i) for i in s.get("input_artifact_ids") or []]
        if len(named) > 3:
            named = [f"the {len(named)} artifacts before it"]
        return {
            "title": f"{s['stage_index'] + 1}/8 {s['kind']}",
            "status": s["status"],
            "producer": s.get("producer"),
            "read": read
            + (f" (window {', '.join(windows)})" if windows else "")
            + (f"; inputs: {', '.join(named)}" if named else ""),
            "concluded": frames.summary_of(s["kind"], s["payload"]),
            "freshness": u.get("freshness"),
            "coverage": u.get("coverage"),
            "notes": list(u.get("notes") or []),
            "took_ms": round((s["finished_at"] - s["started_at"]) * 1000, 1),
        }

    def signals(self) -> list[str]:
        """The signals this stage's own plot shows: what the stage looked at or concluded from."""
        s = self.stage
        if s is None:
            return []
        p = s["payload"]
        findings: list[dict[str, Any]] = next(
            (a["payload"].get("findings", []) for a in self.chain if a["kind"] == "anomaly_finding"), []
        )
        fired = list(dict.fromkeys(f["signal"] for f in findings))
        kind = s["kind"]
        if kind == "observation_summary":
            moved = sorted(
                (p.get("signals") or {}).items(),
                key=lambda kv: -abs((kv[1].get("max") or 0) - (kv[1].get("median") or 0)),
            )
            return [name for name, _ in moved[:3]]
        if kind == "root_cause_hypothesis":
            hyps = p.get("hypotheses") or []
            return list(dict.fromkeys(hyps[0].get("supporting") or fired))[:3] if hyps else fired[:3]
        if kind == "verification_result":
            return (
                list(p.get("compared_signals") or [])[:3]
                + [h["signal"] for h in p.get("regression_hints") or []][:2]
            )
        return fired[:3]

    def json(self) -> str:
        text = json.dumps(self.stage, indent=2, sort_keys=True, default=str) if self.stage else "{}"
        return text if len(text) <= MAX_JSON else text[:MAX_JSON] + "\n... (cut)"

    def decisions(self) -> list[dict[str, Any]]:
        from workbench.postmortem import DECISIONS

        if self._decisions is None:
            self._decisions = [
                e for e in self.wb.source.audit(run_id=self.run_id) if e.get("kind") in DECISIONS
            ]
        return self._decisions

    def evidence(self) -> pd.DataFrame:
        if self._evidence is None or self._evidence[0] != len(self.chain):
            self._evidence = (len(self.chain), self.wb.evidence(self.run_id))
        return self._evidence[1]

    def diagram(self) -> str:
        from workbench.diagram import chain_svg

        return chain_svg(self.chain, self.decisions(), current=self.index if self.chain else None)

    def approve(self, reason: str = "", steps: list[int] | None = None) -> dict[str, Any]:
        """Approve the plan, or only ``steps`` of it (the others stay unapproved: not run)."""
        if not self.can_decide():
            raise WorkbenchError(f"run {self.run_id} is {self.status}, not awaiting approval")
        plan = self.plan()
        assert plan is not None
        if steps is not None:
            if not steps:
                raise WorkbenchError("choose at least one step to approve (or reject the plan)")
            unknown = sorted(set(steps) - set(plan.get("needs_approval", [])))
            if unknown:
                raise WorkbenchError(
                    f"steps {unknown} do not need approval; these do: {plan['needs_approval']}"
                )
            if set(steps) == set(plan.get("needs_approval", [])):
                steps = None  # all of them: the approval says so
        try:
            answer = self.wb.source.approve(self.run_id, plan["plan_hash"], steps, reason)
        finally:
            self._decisions = None
            self.refresh()
        which = "every step" if steps is None else f"step(s) {', '.join(map(str, sorted(steps)))}"
        self.message = (
            f"approved by {answer['actor']}: {which}, until "
            f"{pd.Timestamp(answer['expires_at'], unit='s', tz='UTC'):%Y-%m-%d %H:%M:%S} UTC"
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
            self._decisions = None
            self.refresh()
        self.message = f"rejected by {answer['actor']}: {reason}"
        return answer

    def undoable(self) -> list[dict[str, Any]]:
        """Applied steps with rollback data not rolled back yet."""
        result = next((a["payload"] for a in self.chain if a["kind"] == "execution_result"), None)
        if result is None:
            return []
        done = {a.get("idempotency_key") for a in self.body.get("actions") or [] if a.get("rolled_back_at")}
        return [
            r
            for r in result.get("results", [])
            if r.get("changed_host") and r.get("rollback") and r.get("idempotency_key") not in done
        ]

    def can_rollback(self) -> bool:
        return bool(self.undoable()) and not self.live

    def rollback(self, reason: str) -> dict[str, Any]:
        if not self.can_rollback():
            raise WorkbenchError(f"run {self.run_id} has no applied change to roll back ({self.status})")
        if not reason.strip():
            raise WorkbenchError("a rollback needs a reason")
        rollback = getattr(self.wb.source, "rollback", None)
        if rollback is None:
            raise WorkbenchError("a local data directory is read-only: open the run through a controller")
        try:
            answer: dict[str, Any] = rollback(self.run_id, reason)
        finally:
            self._decisions = None
            self.refresh()
        outcomes = ", ".join(f"step {r['step']} {r.get('outcome')}" for r in answer.get("rollbacks", []))
        self.message = f"rollback: {outcomes or 'nothing to undo'}"
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


def _png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)  # a pyplot-free Figure: nothing to close
    return buf.getvalue()


CARD_COLOURS = {"ok": "#2e7d32", "degraded": "#b26a00", "skipped": "#757575", "failed": "#c62828"}


class RunStepper:
    """A run as an operator under pressure reads it: the chain as a graph (status colours,
    the approvals on it), one card per stage (what it read, what it concluded, status,
    uncertainty, its own evidence plot), its JSON behind a toggle; approve a chosen subset
    of steps, reject with a reason, roll back, replay; Follow keeps up with a live run.

    Every part is a widget trait (HTML, Image), none an Output area, so live mode can redraw
    from its thread and tests can read what a browser would show."""

    def __init__(self, wb: Workbench, run_id: str, *, follow_every_s: float = FOLLOW_EVERY_S) -> None:
        import ipywidgets as w

        self.state = StepperState(wb, run_id)
        self.w = w
        self.ticker = Ticker(f"follow-{run_id}", self._follow, follow_every_s, on_end=self._ended)
        self._lock = threading.Lock()
        self.title = w.HTML()
        self.graph = w.HTML()
        self.summary = w.HTML()
        self.card = w.HTML()
        self.plot = w.Image(format="png", layout=w.Layout(max_width="760px"))
        self.json_toggle = w.ToggleButton(
            description="JSON", icon="code", value=False, tooltip="the artifact"
        )
        self.json = w.HTML(layout=w.Layout(display="none"))
        self.prev_button = w.Button(description="Previous", icon="arrow-left")
        self.next_button = w.Button(description="Next", icon="arrow-right")
        self.last_button = w.Button(description="Latest", icon="fast-forward")
        self.follow_toggle = w.ToggleButton(description="Follow", icon="refresh", tooltip="follow a live run")
        self.replay_button = w.Button(description="Replay")
        self.steps_box = w.VBox()
        self.step_boxes: dict[int, Any] = {}
        self.reason = w.Text(
            placeholder="reason (required to reject or roll back)", layout=w.Layout(width="45%")
        )
        self.approve_button = w.Button(description="Approve", button_style="success")
        self.reject_button = w.Button(description="Reject", button_style="danger")
        self.rollback_button = w.Button(description="Roll back", button_style="warning", icon="undo")
        self.status = w.HTML()
        self.fleet = w.HTML()
        self.fleet_plot = w.Image(format="png", layout=w.Layout(max_width="760px"))
        self.prev_button.on_click(lambda _: self._go(self.state.prev))
        self.next_button.on_click(lambda _: self._go(self.state.next))
        self.last_button.on_click(lambda _: self._go(self.state.last))
        self.approve_button.on_click(
            lambda _: self._act(lambda: self.state.approve(self.reason.value, self.chosen()))
        )
        self.reject_button.on_click(lambda _: self._act(lambda: self.state.reject(self.reason.value)))
        self.rollback_button.on_click(lambda _: self._act(lambda: self.state.rollback(self.reason.value)))
        self.replay_button.on_click(lambda _: self._act(self.state.replay))
        self.json_toggle.observe(lambda _: self._show_json(), names="value")
        self.follow_toggle.observe(lambda c: self.start() if c["new"] else self.stop(), names="value")
        self.steps_box.children = ()
        self.steps = w.VBox(
            [w.HTML("<b>Steps that need approval</b> (untick a step to leave it out)"), self.steps_box]
        )
        self.decide = w.VBox(
            [
                self.steps,
                w.HBox([self.reason, self.approve_button, self.reject_button, self.rollback_button]),
            ]
        )
        self.widget = w.VBox(
            [
                self.title,
                self.graph,
                w.HBox(
                    [
                        self.prev_button,
                        self.next_button,
                        self.last_button,
                        self.follow_toggle,
                        self.replay_button,
                        self.json_toggle,
                    ]
                ),
                self.summary,
                self.card,
                self.plot,
                self.json,
                self.decide,
                self.status,
                self.fleet,
                self.fleet_plot,
            ]
        )
        self.widget.add_class("incidentlab-stepper")
        self.render()

    def chosen(self) -> list[int] | None:
        """The ticked steps; None when every step is ticked (approve them all)."""
        ticked = [step for step, box in self.step_boxes.items() if box.value]
        return None if len(ticked) == len(self.step_boxes) else ticked

    def _go(self, step: Any) -> None:
        step()
        self.render()

    def _act(self, action: Any) -> None:
        try:
            action()
        except (WorkbenchError, ControllerError) as exc:
            self.state.message = f"refused: {exc}"
        self.render()

    def _show_json(self) -> None:
        self.json.layout.display = "block" if self.json_toggle.value else "none"

    def _steps(self) -> None:
        wanted = self.state.approvable()
        if [s["step"] for s in wanted] == list(self.step_boxes):
            return
        self.step_boxes = {
            s["step"]: self.w.Checkbox(
                value=True,
                description=f"{s['step']}: {s['action']} on {s['target']} ({s['safety_class']})",
                indent=False,
                layout=self.w.Layout(width="auto"),
            )
            for s in wanted
        }
        self.steps_box.children = tuple(self.step_boxes.values())

    def render(self) -> None:
        with self._lock:
            s = self.state
            run = s.body["run"]
            live = " (live: following)" if self.ticker.running else (" (live)" if s.live else "")
            self.title.value = (
                f"<h3 style='margin:4px 0'>{escape(s.run_id)} on {escape(str(run['host_id']))}: "
                f"{escape(str(run.get('family')))}, {escape(s.status)}{live}</h3>"
            )
            self.graph.value = s.diagram()
            self.summary.value = escape(s.summary())
            c = s.card()
            colour = CARD_COLOURS.get(c["status"], "#9e9e9e")
            cov = c.get("coverage")
            notes = "".join(f"<li>{escape(n)}</li>" for n in c.get("notes") or [])
            self.card.value = (
                f"<div style='border-left:4px solid {colour};padding:6px 10px;margin:4px 0'>"
                f"<b>{escape(c['title'])}</b> <span style='color:{colour}'>{escape(c['status'])}</span>"
                + (
                    f" <small>by {escape(str(c.get('producer')))} in {c.get('took_ms')} ms</small>"
                    if c.get("producer")
                    else ""
                )
                + f"<br><b>Read:</b> {escape(c['read'])}<br><b>Concluded:</b> {escape(c['concluded'])}"
                + (
                    f"<br><b>Uncertainty:</b> telemetry {escape(str(c.get('freshness')))}"
                    + (f", coverage {cov:.0%}" if isinstance(cov, int | float) else "")
                    if c.get("freshness") is not None
                    else ""
                )
                + (f"<ul style='margin:2px 0'>{notes}</ul>" if notes else "")
                + "</div>"
            )
            self.json.value = f"<pre style='max-height:400px;overflow:auto'>{escape(s.json())}</pre>"
            self._show_json()
            self.prev_button.disabled = not s.can_prev()
            self.next_button.disabled = not s.can_next()
            self.last_button.disabled = not s.can_next()
            self._steps()
            self.approve_button.disabled = self.reject_button.disabled = not s.can_decide()
            self.rollback_button.disabled = not s.can_rollback()
            self.decide.layout.display = "block" if s.can_decide() or s.can_rollback() else "none"
            self.steps.layout.display = "block" if s.can_decide() else "none"
            message = escape(s.message)  # it carries the API's words, which carry collectors'
            if s.diff is not None and not s.diff.empty:
                message += s.diff.to_html(index=False, border=0)  # escapes its cells
            self.status.value = message
            self.plot.value = self._plot()
            self._fleet()
            for image in (self.plot, self.fleet_plot):  # an empty image draws as a broken one
                image.layout.display = "block" if len(image.value) else "none"

    def _plot(self) -> bytes:
        from workbench.plots import plot_evidence

        s = self.state
        try:
            evidence = s.evidence()
        except (WorkbenchError, ControllerError):
            return b""
        names = [n for n in s.signals() if not evidence[evidence["signal"] == n].empty]
        if evidence.empty or (not names and s.stage is not None):
            return b""
        title = f"{s.stage['kind']}: {', '.join(names)}" if s.stage is not None else s.run_id
        return _png(plot_evidence(evidence, s.chain, names or None, title=title))

    def _fleet(self) -> None:
        s = self.state
        if not s.fleet:
            self.fleet.value, self.fleet_plot.value = "", b""
            return
        try:
            members = s.wb.members(s.run_id)
            radius = s.wb.blast_radius(s.run_id)
            fig = s.wb.fleet_view(s.run_id)
        except (WorkbenchError, ControllerError) as exc:
            self.fleet.value = f"no fleet view: {escape(str(exc))}"
            return
        table = members[["host_id", "run_id", "family", "state", "confidence"]].to_html(index=False, border=0)
        zones = escape(", ".join(map(str, radius.get("zones") or [])) or "none named")
        hosts = escape(str(radius.get("hosts", len(members))))
        self.fleet.value = f"<b>Across hosts</b>: {hosts} hosts, zones {zones}{table}"
        self.fleet_plot.value = _png(fig)

    # --- live mode ----------------------------------------------------------------------------

    def tick(self) -> bool:
        """One step of live mode: read the run again; redraw when it moved."""
        try:
            moved = self.state.follow()
        except (WorkbenchError, ControllerError) as exc:
            self.state.message = f"follow: {exc}"
            moved = True
        if moved:
            self.render()
        return moved

    def _follow(self) -> bool:
        self.tick()
        return self.state.live

    def _ended(self, why: str) -> None:
        self.follow_toggle.value = False
        self.render()

    def start(self) -> None:
        self.ticker.start()
        self.render()

    def stop(self) -> None:
        self.ticker.stop()

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
