"""The workbench on a store the real workflow made from recorded telemetry: typed frames,
evidence, replay diffs, plots, and the stepper's logic against a real controller."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy.exc

from controller.detectors import DETECTORS
from tests.controller.conftest import COLLECTOR_TOKEN, OPERATOR_TOKEN, ControllerProc, base_config
from tests.workbench.conftest import acting
from workbench import Workbench, WorkbenchError
from workbench.client import LocalSource
from workbench.widgets import BrowserState, RunBrowser, RunStepper, StepperState

Store = tuple[Path, dict[str, str]]


def test_runs_is_one_typed_row_per_run(store: Store) -> None:
    data, ids = store
    with Workbench(data) as wb:
        df = wb.runs()
    assert set(df["run_id"]) == set(ids.values())
    assert str(df["created_at"].dtype) == "datetime64[ns, UTC]"
    assert isinstance(df["status"].dtype, pd.CategoricalDtype) and isinstance(
        df["family"].dtype, pd.CategoricalDtype
    )
    assert df["confidence"].dtype == "float64" and df["stage"].dtype == "int64"
    assert list(df["created_at"]) == sorted(df["created_at"], reverse=True)
    rows = {str(r["run_id"]): r for r in df.to_dict("records")}
    assert rows[ids["awaiting"]]["status"] == "awaiting_approval"
    # Two sha256sum workers under one shell: the tree owns the fault (the recording's cgroup is shared).
    assert rows[ids["completed"]]["culprit_kind"] == "process_tree"
    assert str(rows[ids["completed"]]["culprit"]) == "pid 24166"
    assert pd.isna(rows[ids["awaiting"]]["closed_at"])
    # Each run's lifecycle: state, when its fault began, how long it took to find.
    done = rows[ids["completed"]]
    assert done["state"] in ("firing", "recovering", "resolved") and done["flaps"] == 0
    assert (
        str(df["fault_started_at"].dtype) == "datetime64[ns, UTC]"
        and df["time_to_detect_s"].dtype == "float64"
    )
    assert done["time_to_detect_s"] >= 0 and pd.isna(done["silenced_by"])
    if done["state"] != "resolved":
        assert pd.isna(done["time_to_resolve_s"]) and pd.isna(done["resolved_at"])
    with Workbench(data) as wb:
        assert set(wb.runs(status="completed")["run_id"]) == {ids["completed"], ids["memory"]}
        assert list(wb.runs(host="recorded-throttle")["run_id"]) == [ids["awaiting"]]
        assert wb.runs(since=pd.Timestamp.now(tz="UTC")).empty


def test_chain_is_one_row_per_artifact_in_stage_order(store: Store) -> None:
    data, ids = store
    with Workbench(data) as wb:
        chain = wb.chain(ids["completed"])
    assert list(chain["stage_index"]) == list(range(8))
    summaries = list(chain["summary"])
    assert summaries[2].startswith("cpu_saturation: pid 24166") and summaries[6] == "skipped: dry_run"
    first = chain["payload"].iloc[0]
    assert isinstance(first, dict) and "signals" in first
    assert (chain["finished_at"] >= chain["started_at"]).all()


def test_evidence_hypotheses_and_audit_frames(store: Store) -> None:
    data, ids = store
    with Workbench(data) as wb:
        ev = wb.evidence(ids["completed"])
        hyps = wb.hypotheses(ids["completed"])
        audit = wb.audit(run_id=ids["completed"])
        only = wb.evidence(ids["completed"], signals=["cpu_busy_pct"])
    assert list(ev.columns) == ["ts", "signal", "value", "window"]
    assert {"cpu_busy_pct", "psi_cpu_some"} <= set(ev["signal"].astype(str))
    assert set(only["signal"].astype(str)) == {"cpu_busy_pct"} and only["value"].max() > 90
    assert hyps.loc[0, "family"] == "cpu_saturation" and hyps.loc[0, "rank"] == 1
    assert set(audit["kind"].astype(str)) == {"gate_decision"}
    assert str(audit["at"].dtype) == "datetime64[ns, UTC]"


def test_replay_diff_is_empty_with_the_same_code_and_names_what_changes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, ids = store
    with Workbench(data) as wb:
        assert wb.replay(ids["completed"]).empty
        monkeypatch.setitem(DETECTORS["cpu_saturation"].defaults, "cpu_busy_pct", 95.0)
        diff = wb.replay(ids["completed"])
    assert not diff.empty and "anomaly_finding" in set(diff["kind"])
    assert list(diff.columns) == ["kind", "field", "recorded", "replayed"]


def test_plot_marks_the_anomaly_window(store: Store) -> None:
    data, ids = store
    with Workbench(data) as wb:
        fig = wb.plot(ids["completed"])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "cpu_busy_pct"
    assert any(p.get_label() == "anomaly" for p in ax.patches)


def test_local_sources_explain_what_they_cannot_do(tmp_path: Path, store: Store) -> None:
    with pytest.raises(WorkbenchError, match="no run store"):
        Workbench(tmp_path / "nothing")
    data, ids = store
    with Workbench(data) as wb:
        with pytest.raises(WorkbenchError, match="no workflow run"):
            wb.chain("run-nope")
        state = StepperState(wb, ids["awaiting"])
        assert state.can_decide()
        with pytest.raises(WorkbenchError, match="read-only"):
            state.approve("looks right")
    with pytest.raises(WorkbenchError, match="needs a token"):
        Workbench("http://127.0.0.1:1")


def test_stepper_steps_and_enables_decisions_only_while_awaiting(store: Store) -> None:
    data, ids = store
    with Workbench(data) as wb:
        done = StepperState(wb, ids["completed"])
        assert done.index == 0 and not done.can_prev() and done.can_next()
        for _ in range(10):
            done.next()
        assert done.index == 7 and not done.can_next() and done.stage is not None
        assert done.stage["kind"] == "incident_report" and '"kind": "incident_report"' in done.json()
        done.prev()
        assert done.stage is not None and done.stage["kind"] == "verification_result"
        assert not done.can_decide()
        with pytest.raises(WorkbenchError, match="not awaiting approval"):
            done.reject("no")
        assert done.replay().empty and done.message == "replay: no conclusion changed"
        waiting = StepperState(wb, ids["awaiting"])
        assert waiting.can_decide() and len(waiting.chain) == 5  # parked before the executor

        widget = RunStepper(wb, ids["awaiting"])  # the widgets draw the same state, no browser needed
        assert widget.prev_button.disabled and not widget.approve_button.disabled
        widget.next_button.click()
        assert widget.state.index == 1 and not widget.prev_button.disabled
        assert "anomaly_finding" in widget.summary.value
        browser = BrowserState(wb, status="awaiting_approval")
        assert sorted(browser.table()["run_id"]) == sorted([ids["awaiting"], ids["choose"]])
        assert list(RunBrowser(wb).pick.options)  # the table fills the picker


@pytest.fixture
def controller_on(tmp_path: Path) -> Iterator[Callable[..., ControllerProc]]:
    started: list[ControllerProc] = []

    def start(data: Path, config: dict[str, Any] | None = None) -> ControllerProc:
        c = ControllerProc(tmp_path, config or base_config(data), "wb")
        started.append(c)
        return c.start()

    yield start
    for c in started:
        c.stop()


def test_approve_through_the_stepper_reaches_the_controller(
    store: Store, controller_on: Callable[[Path], ControllerProc]
) -> None:
    data, ids = store
    ctl = controller_on(data)
    with Workbench(ctl.url, token=OPERATOR_TOKEN) as wb:
        state = StepperState(wb, ids["awaiting"])
        assert state.can_decide()
        answer = state.approve("the cap is right")
        assert answer["actor"] == "ops" and answer["decision"] == "approved"
        assert "approved by ops" in state.message
        audit = wb.audit(run_id=ids["awaiting"], kind="approval")
        assert list(audit["actor"]) == ["ops"]
    with Workbench(ctl.url, token=COLLECTOR_TOKEN) as intruder, pytest.raises(WorkbenchError, match="403"):
        intruder.runs()


@pytest.mark.root
def test_approve_a_chosen_subset_then_roll_back_from_the_stepper(
    store: Store, controller_on: Callable[..., ControllerProc], plan_cgroup: Path
) -> None:
    """Of three steps that need approval the operator ticks one (the CPU quota); it is applied
    to a real cgroup, the renices are not run; then Roll back puts the quota back."""
    data, ids = store
    before = plan_cgroup.read_text()
    ctl = controller_on(data, acting(data))
    with Workbench(ctl.url, token=OPERATOR_TOKEN) as wb:
        widget = RunStepper(wb, ids["choose"], follow_every_s=0.2)
        assert sorted(widget.step_boxes) == [1, 2, 3] and widget.rollback_button.disabled
        assert "cgroup_cpu_quota" in widget.step_boxes[3].description
        widget.step_boxes[1].value = widget.step_boxes[2].value = False
        assert widget.chosen() == [3]
        widget.approve_button.click()
        assert "approved by ops: step(s) 3" in widget.status.value, widget.status.value
        deadline = time.monotonic() + 30
        while widget.state.status != "completed":
            assert time.monotonic() < deadline, widget.state.status
            widget.tick()
            time.sleep(0.2)
        assert widget.state.index == 7  # following: on the newest stage
        outcomes = {r["step"]: r["outcome"] for r in widget.state.undoable()}
        assert outcomes == {3: "applied"}
        result = next(a["payload"] for a in widget.state.chain if a["kind"] == "execution_result")
        assert {r["step"]: r["outcome"] for r in result["results"]}[1] == "not_run"
        assert plan_cgroup.read_text() != before  # the host changed
        assert not widget.rollback_button.disabled
        widget.rollback_button.click()  # no reason: refused, nothing sent
        assert "needs a reason" in widget.status.value
        widget.reason.value = "the quota starves the service"
        widget.rollback_button.click()
        assert "step 3 rolled_back" in widget.status.value, widget.status.value
        assert plan_cgroup.read_text() == before
        assert widget.rollback_button.disabled and not widget.state.undoable()
        (entry,) = wb.source.audit(run_id=ids["choose"], kind="rollback")
        assert entry["actor"] == "ops" and entry["step"] == 3
        (approval,) = wb.source.audit(run_id=ids["choose"], kind="approval")
        assert approval["detail"]["steps"] == [3]
        assert 'data-status="ok"' in widget.graph.value and "approved 3 by ops" in widget.graph.value


def test_stepper_cards_signals_and_the_json_toggle(store: Store) -> None:
    data, ids = store
    with Workbench(data) as wb:
        widget = RunStepper(wb, ids["completed"])
        assert widget.json.layout.display == "none"
        widget.json_toggle.value = True
        assert widget.json.layout.display == "block" and "observation_summary" in widget.json.value
        assert "Read:</b> the host&#x27;s hot-state window (window recorded-cpu" in widget.card.value
        widget.next_button.click()
        assert widget.state.signals() == ["cpu_busy_pct"] and bytes(widget.plot.value).startswith(b"\x89PNG")
        assert "Concluded:</b> cpu_saturation (0.80)" in widget.card.value
        assert 'stroke-width="3"' in widget.graph.value  # the current stage outlined
        widget.last_button.click()
        assert widget.state.index == 7 and widget.last_button.disabled
        assert widget.decide.layout.display == "none"  # nothing to decide or undo
        assert not widget.state.live and widget.tick() is False  # a finished run does not move
        with pytest.raises(WorkbenchError, match="no applied change"):
            widget.state.rollback("why not")
        # What the API says (and collectors said) shows as text, never as markup.
        widget.state.message = 'refused: <img src=x onerror="alert(1)">'
        widget.render()
        assert "<img" not in widget.status.value and "&lt;img src=x" in widget.status.value
        choose = StepperState(wb, ids["choose"])
        with pytest.raises(WorkbenchError, match="at least one step"):
            choose.approve("", steps=[])
        with pytest.raises(WorkbenchError, match=r"steps \[0\] do not need approval"):
            choose.approve("", steps=[0, 3])
        with pytest.raises(WorkbenchError, match="read-only"):
            choose.approve("", steps=[3])


def test_reject_through_the_widget_reaches_the_controller(
    store: Store, controller_on: Callable[[Path], ControllerProc]
) -> None:
    data, ids = store
    ctl = controller_on(data)
    with Workbench(ctl.url, token=OPERATOR_TOKEN) as wb:
        widget = RunStepper(wb, ids["awaiting"])
        widget.reject_button.click()  # no reason: refused in the widget, nothing sent
        assert "needs a reason" in widget.status.value
        widget.reason.value = "not during the training run"
        widget.reject_button.click()
        assert "rejected by ops" in widget.status.value
        rejections = wb.audit(run_id=ids["awaiting"], kind="rejection")
        (rejection,) = rejections["detail"]
        assert rejection["reason"] == "not during the training run"


def test_frames_keep_their_columns_and_types_when_empty(tmp_path: Path) -> None:
    from controller.store.db import make_engine, migrate
    from workbench import frames

    data = tmp_path / "empty"
    db = make_engine(f"sqlite:///{data / 'agent' / 'workflow_runs.db'}")
    migrate(db)
    db.dispose()
    with Workbench(data) as wb:
        runs = wb.runs()
    assert runs.empty and list(runs.columns) == frames.RUN_COLUMNS
    assert str(runs["created_at"].dtype) == "datetime64[ns, UTC]" and str(runs["closed_at"].dtype) == str(
        runs["created_at"].dtype
    )
    chain = frames.chain_frame([])
    assert (
        list(chain.columns) == frames.CHAIN_COLUMNS
        and str(chain["finished_at"].dtype) == "datetime64[ns, UTC]"
    )
    hyps = frames.hypotheses_frame([])
    assert list(hyps.columns) == frames.HYPOTHESIS_COLUMNS
    ev = frames.evidence_frame({})
    assert list(ev.columns) == ["ts", "signal", "value", "window"] and ev["value"].dtype == "float64"


def test_a_local_source_never_writes(store: Store) -> None:
    data, ids = store
    db_file = data / "agent" / "workflow_runs.db"
    before = db_file.stat().st_mtime_ns
    with Workbench(data) as wb:
        wb.runs()
        wb.replay(ids["completed"])
        # Its engine refuses a write even when asked for one directly (query_only).
        source = wb.source
        assert isinstance(source, LocalSource)
        with pytest.raises(sqlalchemy.exc.OperationalError, match="readonly"), source.db.begin() as conn:
            conn.exec_driver_sql("DELETE FROM workflow_runs")
    assert db_file.stat().st_mtime_ns == before


def test_the_anomaly_window_starts_where_the_signal_went_bad_either_way() -> None:
    from workbench.plots import anomaly_window

    ts = pd.to_datetime([0, 10, 20, 30, 40], unit="s", utc=True)
    frame = pd.DataFrame(
        {"ts": ts, "value": [60.0, 55, 50, 6, 4], "signal": "mem_available_pct", "window": "run"}
    )
    low = {"signal": "mem_available_pct", "threshold": 10.0, "value": 4.0}  # low is bad
    assert anomaly_window(frame, low) == (ts[3], ts[4])
    high = frame.assign(value=[1.0, 2, 3, 95, 97], signal="cpu_busy_pct")
    assert anomaly_window(high, {"signal": "cpu_busy_pct", "threshold": 90.0, "value": 97.0}) == (
        ts[3],
        ts[4],
    )
    assert anomaly_window(high, {"signal": "cpu_busy_pct", "threshold": 99.0, "value": 99.5}) is None
