"""The GPU endpoints (nodes, events, correlation, timeline) and the XID counters at /metrics,
over synthetic GPU windows (no GPU here: NVML's side is tested at the library boundary)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgspec

from collector.wire import validate_batch
from controller.config import HotStateSettings
from controller.metrics import Metrics
from controller.runtime import Runtime
from controller.workflow.analysis_pool import Evaluator, WorkerConfig
from testkit.scenarios import POD, batch_doc, window

from .test_workflow_api import OPS

Api = tuple[httpx.Client, Runtime]


def attributed_xid(d: dict[str, Any], i: int, faulty: bool) -> None:
    """XID 79 drained while one process (in a pod) held the device."""
    if faulty and i % 150 == 120:
        d["gpu"]["xid_events"] = [
            {
                "xid": 79,
                "device_uuid": "GPU-aaaa",
                "count": 1,
                "pid": 8080,
                "pids": [8080],
                "pid_source": "device_processes",
            }
        ]
    d["processes"]["rows"].append(
        {"pid": 8080, "comm": "trainer", "cpu_pct": 1.0, "rss_bytes": 1 << 30, "num_fds": 9, "pod_uid": POD}
    )


def ingest(
    rt: Runtime, host: str, family: str | None, tweak: Any = None, labels: dict[str, str] | None = None
) -> None:
    snaps = window(family, tweak=tweak)
    doc = batch_doc(snaps, host_id=host)
    doc["collector"] = {"host_id": host, "labels": labels or {"gpu_product": "NVIDIA-H100"}}
    raw = msgspec.json.encode(doc)
    rt.hot.ingest(validate_batch(raw), raw)


def test_nodes_list_gpu_hosts_with_their_devices(api: Api) -> None:
    client, rt = api
    ingest(rt, "gpu-1", "gpu_xid", attributed_xid)
    ingest(rt, "cpu-1", "cpu_saturation")  # no GPU source: not a GPU node
    body = client.get("/api/v1/gpu/nodes", headers=OPS).json()
    assert body["gpu_hosts"] == 1 and [n["host_id"] for n in body["nodes"]] == ["gpu-1"]
    node = body["nodes"][0]
    assert node["labels"] == {"gpu_product": "NVIDIA-H100"} and node["freshness"] == "fresh"
    (dev,) = node["devices"]
    assert dev["uuid"] == "GPU-aaaa" and dev["name"] == "NVIDIA H100" and dev["util_pct"] == 0.0
    assert dev["processes"][0] == {
        "pid": 8080,
        "comm": "trainer",
        "cgroup": None,
        "pod_uid": POD,
        "used_bytes": dev["processes"][0]["used_bytes"],
    }


def test_events_name_the_xid_process_and_pod_and_the_ecc_and_throttle_changes(api: Api) -> None:
    client, rt = api
    ingest(rt, "gpu-x", "gpu_xid", attributed_xid)
    ingest(rt, "gpu-e", "gpu_ecc")
    ingest(rt, "gpu-t", "gpu_throttling")
    ingest(rt, "gpu-n", "gpu_nvlink_degradation")
    xid = client.get("/api/v1/gpu/events", params={"host": "gpu-x"}, headers=OPS).json()["events"]
    (e,) = [x for x in xid if x["type"] == "xid"]
    assert e["xid"] == 79 and e["critical"] is True and e["device_index"] == 0 and e["ts"] is not None
    assert e["process"]["pod_uid"] == POD and e["process"]["comm"] == "trainer"
    ecc = client.get("/api/v1/gpu/events", params={"host": "gpu-e"}, headers=OPS).json()["events"]
    assert ecc and all(x["type"] == "ecc" and x["new_uncorrected"] >= 1 for x in ecc)
    thr = client.get("/api/v1/gpu/events", params={"host": "gpu-t"}, headers=OPS).json()["events"]
    assert [x["type"] for x in thr] == ["throttle_start"] and "hw_thermal_slowdown" in thr[0]["reasons"]
    nv = client.get("/api/v1/gpu/events", params={"host": "gpu-n"}, headers=OPS).json()["events"]
    assert {x["type"] for x in nv} == {"nvlink_errors", "nvlink_down"}
    everything = client.get("/api/v1/gpu/events", params={"limit": 5}, headers=OPS).json()
    assert everything["count"] == 5
    times = [x["ts"] for x in everything["events"]]
    assert times == sorted(times, reverse=True)
    assert client.get("/api/v1/gpu/events", params={"host": "nowhere"}, headers=OPS).status_code == 404
    assert client.get("/api/v1/gpu/events", params={"host": "../x"}, headers=OPS).status_code == 422


def test_correlation_gives_each_node_and_job_its_risks(api: Api) -> None:
    client, rt = api
    ingest(rt, "gpu-x", "gpu_xid", attributed_xid)
    ingest(rt, "gpu-i", "gpu_memory_held_idle")
    ingest(rt, "gpu-n", "gpu_nvlink_degradation")
    ingest(rt, "gpu-ok", None, lambda d, i, f: d.update(gpu=window("gpu_throttling")[0].sources["gpu"].data))
    body = client.get("/api/v1/gpu/correlation", headers=OPS).json()
    nodes = {n["host_id"]: n for n in body["nodes"]}
    assert (
        nodes["gpu-x"]["reliability"]["family"] == "gpu_xid" and nodes["gpu-x"]["reliability"]["risk"] >= 0.9
    )
    assert nodes["gpu-i"]["starvation"]["family"] == "gpu_memory_held_idle"
    assert nodes["gpu-n"]["communication"]["family"] == "gpu_nvlink_degradation"
    assert all(nodes["gpu-ok"][k]["risk"] == 0.0 for k in ("starvation", "communication", "reliability"))
    jobs = {j["job"]: j for j in body["jobs"]}
    assert jobs["program:trainer"]["nodes"] == ["gpu-x"] and jobs["program:trainer"]["reliability"] >= 0.9
    assert jobs["program:ipykernel"]["starvation"] > 0


def test_timeline_of_one_host(api: Api) -> None:
    client, rt = api
    ingest(rt, "gpu-t", "gpu_throttling")
    body = client.get("/api/v1/gpu/timeline", params={"host": "gpu-t", "points": 50}, headers=OPS).json()
    (dev,) = body["devices"]
    assert len(dev["series"]["util_pct"]) == 50 and dev["series"]["throttled"][-1][1] == 1.0
    assert dev["series"]["temp_c"][-1][1] == 91.0
    assert body["events"][0]["type"] == "throttle_start"
    assert client.get("/api/v1/gpu/timeline", params={"host": "none"}, headers=OPS).status_code == 404
    assert client.get("/api/v1/gpu/timeline", headers=OPS).status_code == 422


def xid_lines(text: str) -> dict[tuple[str, str, str], float]:
    pat = re.compile(
        r'^incidentlab_gpu_xid_errors_total\{device="([^"]*)",host="([^"]*)",xid="(\d+)"\} (\S+)$'
    )
    return {(m[2], m[1], m[3]): float(m[4]) for line in text.splitlines() if (m := pat.match(line))}


def test_xids_are_counted_per_host_device_and_code_at_metrics(api: Api) -> None:
    client, rt = api
    ingest(rt, "gpu-x", "gpu_xid")
    ingest(rt, "gpu-y", "gpu_xid")
    ingest(rt, "gpu-y", "gpu_xid")  # a second XID later: the counter adds, never replaces
    got = xid_lines(client.get("/metrics").text)
    assert got == {("gpu-x", "GPU-aaaa", "79"): 1.0, ("gpu-y", "GPU-aaaa", "79"): 2.0}


def test_the_xid_counter_is_bounded_and_refuses_garbage() -> None:
    m = Metrics()
    m.add_xids("h", [{"xid": 48, "device_uuid": "GPU-a", "count": 2}, {"xid": "x"}, {"xid": True}, "junk"])
    m.add_xids("h", [{"xid": 48, "device_uuid": "GPU-a", "count": -5}, {"xid": 13, "device_uuid": None}])
    assert m.xids.labels("h", "GPU-a", "48")._value.get() == 2.0
    assert m.xids.labels("h", "unknown", "13")._value.get() == 1.0
    import controller.metrics as metrics_mod

    old = metrics_mod.XID_SERIES
    metrics_mod.XID_SERIES = 2
    try:
        m.add_xids("other", [{"xid": 79, "device_uuid": "GPU-b", "count": 3}])
    finally:
        metrics_mod.XID_SERIES = old
    assert m.xid_overflow._value.get() == 3.0


def test_an_analysis_worker_reports_the_xids_it_sees() -> None:
    ev = Evaluator(WorkerConfig(HotStateSettings(), window_s=300, open_threshold=0.5))
    raw = msgspec.json.encode(batch_doc(window("gpu_xid"), host_id="gpu-w"))
    ev.take(raw, received_at=0.0)
    assert [(h, [x["xid"] for x in events]) for h, events in ev.xids] == [("gpu-w", [79])]
