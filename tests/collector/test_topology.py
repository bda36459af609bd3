"""Topology labels: settings, the Downward API file, the Node object, and their travel in CollectorInfo."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from collector.config import load_settings
from collector.errors import ConfigError, TopologyError
from collector.topology import (
    Topology,
    container_names,
    job_owner,
    node_labels,
    parse_downward_labels,
    pod_owners,
    topology_from,
)
from tests.collector.ingest_server import IngestServer
from tests.collector.test_transport import agent_settings, make_agent

# A GKE node's metadata as the API returns it (trimmed to the labels and name).
GKE_NODE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Node",
    "metadata": {
        "name": "gke-prod-gpu-pool-7f3a9c1e-x2lk",
        "labels": {
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/instance-type": "a2-highgpu-1g",
            "cloud.google.com/gke-nodepool": "gpu-pool",
            "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",
            "failure-domain.beta.kubernetes.io/zone": "us-central1-a",
            "kubernetes.io/hostname": "gke-prod-gpu-pool-7f3a9c1e-x2lk",
            "node.kubernetes.io/instance-type": "a2-highgpu-1g",
            "topology.kubernetes.io/region": "us-central1",
            "topology.kubernetes.io/zone": "us-central1-a",
            "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB",
        },
    },
}


def test_node_labels_map_the_well_known_keys() -> None:
    got = node_labels(GKE_NODE, extra=("cloud.google.com/gke-accelerator",))
    assert got == {
        "zone": "us-central1-a",
        "region": "us-central1",
        "instance_type": "a2-highgpu-1g",
        "gpu_product": "NVIDIA-A100-SXM4-40GB",
        "node_pool": "gpu-pool",
        "gke_accelerator": "nvidia-tesla-a100",
        "node": "gke-prod-gpu-pool-7f3a9c1e-x2lk",
    }


def test_node_labels_fall_back_to_the_beta_keys_and_skip_bad_values() -> None:
    node = {
        "metadata": {
            "labels": {"failure-domain.beta.kubernetes.io/zone": "z1", "eks.amazonaws.com/nodegroup": "x\n"}
        }
    }
    assert node_labels(node) == {"zone": "z1"}
    with pytest.raises(TopologyError, match=r"metadata\.labels"):
        node_labels({"metadata": {}})
    with pytest.raises(TopologyError):
        node_labels(["not", "a", "node"])


def test_downward_file_is_parsed_with_go_quoting() -> None:
    text = 'app="trainer"\ntopology.kubernetes.io/zone="eu-west-1b"\nnote="a \\"quoted\\" \\u00e9"\n\n'
    assert parse_downward_labels(text) == {
        "app": "trainer",
        "topology.kubernetes.io/zone": "eu-west-1b",
        "note": 'a "quoted" é',
    }
    for bad in ("app=trainer", 'app="unterminated', 'app="bad \\x escape"'):
        with pytest.raises(TopologyError, match="line 1"):
            parse_downward_labels(bad)


def test_settings_refuse_bad_labels() -> None:
    assert load_settings(labels={"zone": "a", "rack": "r7"}).labels == {"zone": "a", "rack": "r7"}
    for bad in ({"Zone": "a"}, {"zone": "x" * 200}, {"zone": "a\nb"}, {f"l{i}": "v" for i in range(40)}):
        with pytest.raises(ConfigError, match="labels"):
            load_settings(labels=bad)
    with pytest.raises(ConfigError, match="node_name"):
        load_settings(kubernetes={"node_name": "Bad_Name"})


class _NodeApi:
    """A Kubernetes API answering GET /api/v1/nodes/NAME for one node (or an error)."""

    def __init__(
        self,
        node: dict[str, Any],
        pods: dict[str, Any] | None = None,
        jobs: dict[str, tuple[int, Any]] | None = None,
    ) -> None:
        self.node = node
        self.pods = pods or {"kind": "PodList", "items": []}
        self.jobs = jobs or {}  # path -> (status, body)
        self.paths: list[str] = []
        self.status = 200
        self.auth: list[str | None] = []
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_GET(self) -> None:
                api.auth.append(self.headers.get("Authorization"))
                api.paths.append(self.path)
                name = api.node["metadata"]["name"]
                pods = f"/api/v1/pods?fieldSelector=spec.nodeName%3D{name}&resourceVersion=0"
                doc = {f"/api/v1/nodes/{name}": api.node, pods: api.pods}.get(self.path)
                if self.path in api.jobs:
                    code, job = api.jobs[self.path]
                    body = json.dumps(job).encode()
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                ok = doc is not None and api.status == 200
                body = json.dumps(doc if ok else {"kind": "Status", "code": 404}).encode()
                self.send_response(200 if ok else (api.status if api.status != 200 else 404))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _plain_open(req: Any, timeout: float) -> bytes:
    import urllib.request

    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body: bytes = resp.read()
    return body


def test_the_node_object_fills_what_settings_leave(tmp_path: Path) -> None:
    api = _NodeApi(GKE_NODE)
    token = tmp_path / "token"
    token.write_text("sa-token\n")
    try:
        topo = Topology(
            {"zone": "override", "cluster": "prod"},
            node_name="gke-prod-gpu-pool-7f3a9c1e-x2lk",
            api_url=api.url,
            token_file=token,
            opener=_plain_open,
        )
        assert topo.labels() == {"zone": "override", "cluster": "prod"}  # nothing read yet
        topo.refresh()
        labels = topo.labels()
        assert labels["zone"] == "override" and labels["cluster"] == "prod"  # settings win
        assert labels["node_pool"] == "gpu-pool" and labels["region"] == "us-central1"
        assert api.auth == ["Bearer sa-token"] * 2  # the node, and its pods
        assert topo.state() == {"sources": ["settings", "kubernetes_api"], "errors": {}}
        # The API failing later keeps the last labels and says why.
        api.status = 403
        topo.refresh()
        assert topo.labels() == labels
        assert "HTTP 403" in topo.state()["errors"]["node"]
    finally:
        api.close()


def test_an_unreachable_api_and_a_bad_file_are_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "labels"
    bad.write_text("not a label line\n")
    topo = Topology(
        {}, node_name="n1", api_url="http://127.0.0.1:9", downward_file=bad, timeout_s=1, opener=_plain_open
    )
    topo.refresh()
    errors = topo.state()["errors"]
    assert set(errors) == {"node", "pods", "downward"} and "line 1" in errors["downward"]
    assert topo.labels() == {}
    bad.write_text('topology.kubernetes.io/zone="z9"\n')
    topo.refresh()
    assert topo.labels() == {"zone": "z9"} and "downward" not in topo.state()["errors"]


def test_topology_from_settings(tmp_path: Path) -> None:
    s = load_settings(labels={"rack": "r1"}, kubernetes={"node_name": "n1", "api_url": "https://api:6443"})
    topo = topology_from(s)
    assert topo.node_name == "n1" and topo.api_url == "https://api:6443" and topo.static == {"rack": "r1"}
    assert topology_from(load_settings()).node_name is None


def test_labels_travel_in_collector_info_and_a_change_resends_it(tmp_path: Path) -> None:
    with IngestServer() as srv:
        settings = agent_settings(tmp_path, srv.url).model_copy(
            update={"labels": {"zone": "a", "rack": "r1"}}
        )
        agent = make_agent(settings)
        try:
            agent.sample_once()
            agent.sample_once()
            agent.topology.static = {"zone": "b", "rack": "r1"}  # as if the node moved
            agent.sample_once()
            while agent.ship_once():
                pass
            infos = [b.collector for b in srv.received.batches]
            assert infos[0] is not None and infos[0]["labels"] == {"zone": "a", "rack": "r1"}
            assert infos[0]["topology"] == {"sources": ["settings"], "errors": {}}
            assert infos[1] is None  # unchanged: not sent again
            assert infos[2] is not None and infos[2]["labels"]["zone"] == "b"
        finally:
            agent.close()


# A node's pods as the API lists them (trimmed): a Deployment's, a StatefulSet's, a bare one.
PODS: dict[str, Any] = {
    "kind": "PodList",
    "items": [
        {
            "metadata": {
                "name": "api-7d9c6b5f4-x2lkq",
                "namespace": "shop",
                "uid": "0b1c2d3e-aaaa-bbbb-cccc-000000000001",
                "labels": {"app": "api", "pod-template-hash": "7d9c6b5f4"},
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": "api-7d9c6b5f4",
                        "controller": True,
                    }
                ],
            },
            # Statuses as containerd reports them (the id the cgroup path holds, with its scheme).
            "status": {
                "containerStatuses": [
                    {"name": "api", "containerID": "containerd://" + "a" * 64},
                    {"name": "envoy", "containerID": "containerd://" + "b" * 64},
                ],
                "initContainerStatuses": [{"name": "migrate", "containerID": "containerd://" + "c" * 64}],
            },
        },
        {
            "metadata": {
                "name": "db-0",
                "namespace": "shop",
                "uid": "0b1c2d3e-aaaa-bbbb-cccc-000000000002",
                "ownerReferences": [{"kind": "StatefulSet", "name": "db", "controller": True}],
            },
            # CRI-O's scheme; a container not started yet has no id.
            "status": {
                "containerStatuses": [
                    {"name": "pg", "containerID": "cri-o://" + "d" * 64},
                    {"name": "waiting", "containerID": ""},
                    {"name": "bad", "containerID": "containerd://not-hex"},
                ]
            },
        },
        {"metadata": {"name": "debug", "namespace": "ops", "uid": "0b1c2d3e-aaaa-bbbb-cccc-000000000003"}},
        {"metadata": {"name": "broken"}},
        "garbage",
    ],
}


def test_pod_owners_name_the_workload() -> None:
    got = pod_owners(PODS)
    assert got == {
        "0b1c2d3e-aaaa-bbbb-cccc-000000000001": {
            "namespace": "shop",
            "pod": "api-7d9c6b5f4-x2lkq",
            "workload": "shop/Deployment/api",
        },
        "0b1c2d3e-aaaa-bbbb-cccc-000000000002": {
            "namespace": "shop",
            "pod": "db-0",
            "workload": "shop/StatefulSet/db",
        },
        "0b1c2d3e-aaaa-bbbb-cccc-000000000003": {
            "namespace": "ops",
            "pod": "debug",
            "workload": "ops/Pod/debug",
        },
    }
    with pytest.raises(TopologyError, match="items"):
        pod_owners({"kind": "Status"})


def test_container_names_by_the_id_the_cgroup_path_holds() -> None:
    assert container_names(PODS) == {
        "a" * 64: "api",
        "b" * 64: "envoy",
        "c" * 64: "migrate",
        "d" * 64: "pg",
    }
    with pytest.raises(TopologyError, match="items"):
        container_names({"kind": "Status"})


def test_process_rows_of_a_pod_are_named(tmp_path: Path) -> None:
    api = _NodeApi(GKE_NODE, PODS)
    try:
        topo = Topology({}, node_name=GKE_NODE["metadata"]["name"], api_url=api.url, opener=_plain_open)
        topo.refresh()
        assert "pods" not in topo.state()["errors"]
        snap: dict[str, Any] = {
            "sources": {
                "processes": {
                    "data": {
                        "rows": [
                            {
                                "pid": 1,
                                "pod_uid": "0b1c2d3e-aaaa-bbbb-cccc-000000000001",
                                "container_id": "b" * 64,
                            },
                            {"pid": 2, "pod_uid": None},
                            {"pid": 3, "pod_uid": "0b1c2d3e-aaaa-bbbb-cccc-0000000000ff"},  # not on this node
                        ]
                    }
                }
            }
        }
        topo.name_pods(snap)
        rows = snap["sources"]["processes"]["data"]["rows"]
        assert rows[0]["workload"] == "shop/Deployment/api" and rows[0]["namespace"] == "shop"
        assert rows[0]["container"] == "envoy"  # the sidecar, not the pod's first container
        assert "workload" not in rows[1] and "workload" not in rows[2]
        topo.name_pods({"sources": {}})  # no processes source: nothing to do
    finally:
        api.close()


def job(ns: str, name: str, cronjob: str | None) -> dict[str, Any]:
    owners = [{"apiVersion": "batch/v1", "kind": "CronJob", "name": cronjob, "controller": True}]
    return {
        "kind": "Job",
        "metadata": {"namespace": ns, "name": name, "ownerReferences": owners if cronjob else []},
    }


def job_pod(uid: str, ns: str, job_name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{job_name}-x7k2p",
            "namespace": ns,
            "uid": uid,
            "labels": {"batch.kubernetes.io/job-name": job_name},
            "ownerReferences": [{"kind": "Job", "name": job_name, "controller": True}],
        }
    }


JOBS_PATH = "/apis/batch/v1/namespaces/batch/jobs/"


def test_a_cronjobs_pods_are_named_by_the_cronjob() -> None:
    pods = {
        "kind": "PodList",
        "items": [
            job_pod("u-1", "batch", "nightly-29412345"),
            job_pod("u-2", "batch", "adhoc"),
            job_pod("u-3", "batch", "gone"),
        ],
    }
    api = _NodeApi(
        GKE_NODE,
        pods,
        {
            JOBS_PATH + "nightly-29412345": (200, job("batch", "nightly-29412345", "nightly")),
            JOBS_PATH + "adhoc": (200, job("batch", "adhoc", None)),
            JOBS_PATH + "gone": (404, {"kind": "Status", "code": 404}),
        },
    )
    try:
        topo = Topology({}, node_name=GKE_NODE["metadata"]["name"], api_url=api.url, opener=_plain_open)
        topo.refresh()
        assert topo.pod("u-1") == {
            "namespace": "batch",
            "pod": "nightly-29412345-x7k2p",
            "workload": "batch/CronJob/nightly",
        }
        assert topo.pod("u-2")["workload"] == "batch/Job/adhoc"  # type: ignore[index]
        assert topo.pod("u-3")["workload"] == "batch/Job/gone"  # type: ignore[index]
        assert "jobs" not in topo.state()["errors"]
        asked = [p for p in api.paths if p.startswith(JOBS_PATH)]
        assert sorted(asked) == sorted(JOBS_PATH + n for n in ("nightly-29412345", "adhoc", "gone"))
        topo.refresh()  # known Jobs are not asked for again, and keep their CronJob
        assert [p for p in api.paths if p.startswith(JOBS_PATH)] == asked
        assert topo.pod("u-1")["workload"] == "batch/CronJob/nightly"  # type: ignore[index]
    finally:
        api.close()


def test_jobs_the_collector_may_not_read_stay_jobs_and_say_why() -> None:
    pods = {"kind": "PodList", "items": [job_pod("u-1", "batch", "a"), job_pod("u-2", "batch", "b")]}
    forbidden = (403, {"kind": "Status", "code": 403})
    api = _NodeApi(GKE_NODE, pods, {JOBS_PATH + "a": forbidden, JOBS_PATH + "b": forbidden})
    try:
        topo = Topology({}, node_name=GKE_NODE["metadata"]["name"], api_url=api.url, opener=_plain_open)
        topo.refresh()
        assert "HTTP 403" in topo.state()["errors"]["jobs"]
        assert topo.pod("u-1")["workload"] == "batch/Job/a"  # type: ignore[index]
        assert len([p for p in api.paths if p.startswith(JOBS_PATH)]) == 1  # not once per Job
    finally:
        api.close()


def test_job_owner_reads_only_a_controlling_cronjob() -> None:
    assert job_owner(job("batch", "n-1", "n")) == "batch/CronJob/n"
    assert job_owner(job("batch", "n-1", None)) is None
    other = job("batch", "n-1", "n")
    other["metadata"]["ownerReferences"][0]["kind"] = "Workflow"  # an Argo Workflow's Job
    assert job_owner(other) is None
    with pytest.raises(TopologyError, match="namespace"):
        job_owner({"kind": "Status"})
