"""A live look at a host: the controller's window endpoint (bounded, hostile inputs refused)
and wb.window / wb.live drawing from it, against a controller holding a recorded window."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from collector.wire import validate_batch
from testkit.store import batches, snapshots
from tests.controller.conftest import OPERATOR_TOKEN, served_api
from workbench import Workbench, WorkbenchError
from workbench.live import LiveView, Ticker, headline, hypotheses_html, window_frame

AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


def test_a_hosts_window_live_from_the_controller(tmp_path: Path) -> None:
    with served_api(tmp_path) as (client, rt):
        for raw in batches(snapshots("cpu_saturation"), "node-live"):
            rt.hot.ingest(validate_batch(raw), raw)
        got = client.get("/api/v1/agent/hosts/node-live/window", headers=AUTH)
        assert got.status_code == 200, got.text
        body = got.json()
        # By default: the signals of what fires, then key ones (the recorded samples are old
        # for this controller's clock: stale telemetry fires beside the CPU).
        assert "cpu_saturation" in [h["family"] for h in body["hypotheses"]]
        assert "cpu_busy_pct" in body["series"] and "psi_cpu_some" in body["series"]
        assert 0 < len(body["series"]["cpu_busy_pct"]) <= 300  # at most the newest 300 points
        few = client.get(
            "/api/v1/agent/hosts/node-live/window",
            params={"signal": ["load1", "no_such_signal"], "points": 5},
            headers=AUTH,
        ).json()
        assert list(few["series"]) == ["load1"] and len(few["series"]["load1"]) == 5
        # Names it does not have never push out the ones it has.
        padded = {"signal": [f"nope{i}" for i in range(11)] + ["load1"]}
        assert list(
            client.get("/api/v1/agent/hosts/node-live/window", params=padded, headers=AUTH).json()["series"]
        ) == ["load1"]
        # Bounded and checked: too many signals, too many points, a bad host name, no token.
        many = {"signal": [f"s{i}" for i in range(13)]}
        for params in (many, {"points": 901}, {"points": 0}, {"signal": "a b"}):
            assert (
                client.get("/api/v1/agent/hosts/node-live/window", params=params, headers=AUTH).status_code
                == 422
            )
        assert client.get("/api/v1/agent/hosts/..%2Fetc/window", headers=AUTH).status_code in (404, 422)
        assert client.get("/api/v1/agent/hosts/nobody/window", headers=AUTH).status_code == 404
        assert client.get("/api/v1/agent/hosts/node-live/window").status_code == 401

        with Workbench(str(client.base_url), token=OPERATOR_TOKEN) as wb:
            df = wb.window("node-live", ["cpu_busy_pct"], points=20)
            assert list(df.columns) == ["ts", "signal", "value"] and len(df) == 20
            assert str(df["ts"].dtype) == "datetime64[ns, UTC]"
            view = LiveView(wb, "node-live", every_s=0.2, start=False)
            assert view.refreshes == 1 and bytes(view.plot.value).startswith(b"\x89PNG")
            assert "cpu_saturation" in view.table.value and "node-live" in view.head.value
            assert view.progress.value == view.progress.max  # the load finished
            view.toggle.value = True  # live: it refreshes on its own
            deadline = time.monotonic() + 10
            while view.refreshes < 3:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            view.toggle.value = False
            assert not view.ticker.running
            time.sleep(0.5)  # a refresh in flight when stopped may finish; then nothing more
            done = view.refreshes
            time.sleep(0.6)
            assert view.refreshes == done  # stopped means stopped
            assert not any(t.name == "live-node-live" for t in threading.enumerate())
            gone = LiveView(wb, "nobody", start=False)
            assert gone.refreshes == 0 and "no telemetry in hot state" in gone.status.value


def test_a_live_view_stops_by_itself(tmp_path: Path) -> None:
    with served_api(tmp_path) as (client, rt):
        for raw in batches(snapshots("cpu_saturation")[-30:], "node-live"):
            rt.hot.ingest(validate_batch(raw), raw)
        with Workbench(str(client.base_url), token=OPERATOR_TOKEN) as wb:
            view = wb.live("node-live", every_s=0.05)
            view.ticker.max_s = 0.3
            deadline = time.monotonic() + 10
            while view.ticker.running:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert not view.toggle.value and "stopped after" in view.status.value


def test_a_stop_during_a_slow_tick_never_leaves_two_loops() -> None:
    """Stopped while a tick is in flight, started again at once: the old loop ends after its
    tick; only the new one goes on. A tick that raises is said and the loop goes on."""
    seen: list[int] = []
    slow = threading.Event()

    def tick() -> bool:
        seen.append(threading.get_ident())
        if len(seen) == 1:
            slow.wait(2)  # the first tick is slow: the stop comes in the middle of it
        if len(seen) == 3:
            raise ValueError("not JSON")
        return True

    t = Ticker("t", tick, 0.05)
    t.start()
    deadline = time.monotonic() + 5
    while not seen:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    first = seen[0]
    t.stop()
    t.start()
    slow.set()
    deadline = time.monotonic() + 5
    while len(seen) < 6:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    t.stop()
    assert seen.count(first) == 1  # the old loop ran no tick after its stop
    assert len(set(seen[1:])) == 1 and t.error is None  # one loop, and it went on past the raise
    ended: list[str] = []
    done = Ticker("d", lambda: False, 0.01, on_end=ended.append)
    done.start()
    deadline = time.monotonic() + 5
    while not ended:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert ended == ["done"] and not done.running


def test_a_data_directory_has_no_live_look(built_store: tuple[Path, dict[str, str]]) -> None:
    data, _ = built_store
    with Workbench(data) as wb, pytest.raises(WorkbenchError, match="needs a controller"):
        wb.window("recorded-cpu")


def test_the_parts_are_pure() -> None:
    assert window_frame({}).empty and list(window_frame({}).columns) == ["ts", "signal", "value"]
    assert "nothing fires" in hypotheses_html({"hypotheses": []})
    html = hypotheses_html({"hypotheses": [{"rank": 1, "family": "<b>x</b>", "confidence": 0.5}]})
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    line = headline({"host_id": "h", "window": {}, "freshness": {"gpu": "stale", "ebpf": "unavailable"}})
    assert "no window" in line and "not fresh: gpu stale" in line and "ebpf" not in line
