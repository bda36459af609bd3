"""The workbench's fleet view: incidents as a frame, members, blast radius and the hosts-by-time
heatmap, read from a store the real engine made from recorded windows (locally and through
a controller's API)."""

from __future__ import annotations

from pathlib import Path

from testkit.fleet import Fleet, play_together, recorded
from testkit.scenarios import T0
from tests.controller.conftest import OPERATOR_TOKEN, ControllerProc, base_config
from workbench import Workbench
from workbench.frames import fleet_heat
from workbench.widgets import RunStepper


def make_store(tmp: Path) -> str:
    fleet = Fleet(tmp, min_hosts=3)
    hosts = [f"node-{i}" for i in range(3)]
    plays = {h: recorded("cpu_workers_cgroup", T0 + i) for i, h in enumerate(hosts)}
    labels = {h: {"cluster": "prod", "zone": "a"} for h in hosts}
    play_together(fleet, plays, labels, 92)
    (inc,) = fleet.runs(scope="fleet")
    fleet.db.dispose()
    return str(inc["run_id"])


def check(wb: Workbench, run_id: str) -> None:
    df = wb.incidents()
    assert list(df["run_id"]) == [run_id]
    row = df.iloc[0]
    assert row["family"] == "cpu_saturation" and row["method"] == "same_service"
    assert row["service"] == "cgroup:/ilab-workers" and row["members"] == 3 and row["live_members"] == 3
    assert str(df["created_at"].dtype) == "datetime64[ns, UTC]" and row["time_to_detect_s"] >= 0
    members = wb.members(run_id)
    assert sorted(members["host_id"]) == ["node-0", "node-1", "node-2"]
    assert set(members["family"].astype(str)) == {"cpu_saturation"}
    runs = wb.runs()
    assert set(runs.loc[runs["scope"] == "fleet", "run_id"]) == {run_id}
    assert set(runs.loc[runs["scope"] == "host", "fleet_run_id"]) == {run_id}
    radius = wb.blast_radius(run_id)
    assert radius["hosts"] >= 3 and radius["zones"] == ["a"] and radius["clusters"] == ["prod"]
    fig = wb.fleet_view(run_id)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["node-0", "node-1", "node-2"]
    assert "hosts" in ax.get_title()


def test_the_fleet_view_from_a_local_store(tmp_path: Path) -> None:
    run_id = make_store(tmp_path)
    with Workbench(tmp_path) as wb:
        check(wb, run_id)
        # The stepper on a fleet incident shows its members and the hosts-by-time view.
        stepper = RunStepper(wb, run_id)
        assert stepper.state.fleet and "Across hosts</b>: 3 hosts, zones a" in stepper.fleet.value
        assert all(f"node-{i}" in stepper.fleet.value for i in range(3))
        assert bytes(stepper.fleet_plot.value).startswith(b"\x89PNG")
        assert stepper.fleet_plot.layout.display == "block"
        members = next(r for r in wb.runs()["run_id"] if r != run_id)
        alone = RunStepper(wb, members)  # a member run: no fleet part, no broken image
        assert alone.fleet.value == "" and alone.fleet_plot.layout.display == "none"
    assert fleet_heat({"series": {}}).empty and fleet_heat({"series": {"cpu_busy_pct": [[1, 2]]}}).empty


def test_the_fleet_view_through_a_controller(tmp_path: Path) -> None:
    run_id = make_store(tmp_path)
    ctl = ControllerProc(tmp_path, base_config(tmp_path))
    ctl.start()
    try:
        with Workbench(ctl.url, token=OPERATOR_TOKEN) as wb:
            check(wb, run_id)
    finally:
        ctl.stop()
