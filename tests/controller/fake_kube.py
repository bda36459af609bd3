"""A small Kubernetes API server for the actuator tests: answers the calls the official
client makes for nodes and pods, keeps state, checks resourceVersion on patches, and
records every request (method, path, Authorization header)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POD_UID = "0b1c2d3e-aaaa-bbbb-cccc-000000000042"
DEPLOYMENT = "/apis/apps/v1/namespaces/shop/deployments/api"


def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """A JSON merge patch (RFC 7386), as the API applies one: nested maps merge, null deletes."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


class FakeKube:
    def __init__(self) -> None:
        self.node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": "node-1", "uid": "n-1", "resourceVersion": "1"},
            "spec": {
                "unschedulable": False,
                "taints": [{"key": "team", "value": "ml", "effect": "NoSchedule"}],
            },
        }
        self.pods: list[dict[str, Any]] = [self._pod("trainer-0", POD_UID)]
        self.deployment: dict[str, Any] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "shop", "uid": "d-1", "resourceVersion": "7"},
            "spec": {
                "replicas": 6,
                "selector": {"matchLabels": {"app": "api"}},
                "template": {
                    "metadata": {"labels": {"app": "api"}},
                    "spec": {"containers": [{"name": "api", "image": "api:2"}]},
                },
            },
            "status": {"replicas": 6, "updatedReplicas": 3},
        }
        self.requests: list[tuple[str, str, str | None]] = []
        self.evictions: list[dict[str, Any]] = []
        self.pdb_allows = 1  # disruptions the pods' PodDisruptionBudget allows (evictions past it: 429)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _replace(self, pod: dict[str, Any]) -> None:
        """The pod goes; its ReplicaSet makes a replacement with a new UID."""
        self.pods.remove(pod)
        self.pods.append(self._pod(pod["metadata"]["name"] + "-new", "0b1c2d3e-aaaa-bbbb-cccc-000000000043"))

    @staticmethod
    def _pod(name: str, uid: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "uid": uid},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "trainer:1"}]},
            "status": {"phase": "Running"},
        }

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        kube = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "code": code,
                    },
                )

            def _record(self) -> urllib.parse.SplitResult:
                kube.requests.append((self.command, self.path, self.headers.get("Authorization")))
                return urllib.parse.urlsplit(self.path)

            def do_GET(self) -> None:
                url = self._record()
                with kube.lock:
                    if url.path == "/api/v1/nodes/node-1":
                        return self._send(200, kube.node)
                    if url.path == DEPLOYMENT:
                        return self._send(200, kube.deployment)
                    if url.path == DEPLOYMENT + "/scale":
                        return self._send(200, self._scale())
                    if url.path == "/api/v1/pods":
                        sel = urllib.parse.parse_qs(url.query).get("fieldSelector", [""])[0]
                        items = [
                            p for p in kube.pods if sel in ("", f"spec.nodeName={p['spec']['nodeName']}")
                        ]
                        return self._send(
                            200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
                        )
                return self._status(404, "NotFound")

            def do_PATCH(self) -> None:
                url = self._record()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with kube.lock:
                    if url.path == DEPLOYMENT:
                        return self._patch(kube.deployment, body)
                    if url.path == DEPLOYMENT + "/scale":
                        rv = body.get("metadata", {}).get("resourceVersion")
                        if rv is not None and rv != kube.deployment["metadata"]["resourceVersion"]:
                            return self._status(409, "Conflict")
                        kube.deployment["spec"]["replicas"] = body["spec"]["replicas"]
                        kube.deployment["metadata"]["resourceVersion"] = str(
                            int(kube.deployment["metadata"]["resourceVersion"]) + 1
                        )
                        return self._send(200, self._scale())
                    if url.path != "/api/v1/nodes/node-1":
                        return self._status(404, "NotFound")
                    rv = body.get("metadata", {}).get("resourceVersion")
                    if rv is not None and rv != kube.node["metadata"]["resourceVersion"]:
                        return self._status(409, "Conflict")
                    kube.node["spec"].update(body.get("spec", {}))
                    kube.node["metadata"]["resourceVersion"] = str(
                        int(kube.node["metadata"]["resourceVersion"]) + 1
                    )
                    return self._send(200, kube.node)

            def _patch(self, obj: dict[str, Any], body: dict[str, Any]) -> None:
                rv = body.get("metadata", {}).get("resourceVersion")
                if rv is not None and rv != obj["metadata"]["resourceVersion"]:
                    return self._status(409, "Conflict")
                merge(obj["spec"], body.get("spec", {}))
                obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
                if "template" in body.get("spec", {}):
                    obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
                return self._send(200, obj)

            def _scale(self) -> dict[str, Any]:
                d = kube.deployment
                return {
                    "apiVersion": "autoscaling/v1",
                    "kind": "Scale",
                    "metadata": {
                        "name": d["metadata"]["name"],
                        "namespace": d["metadata"]["namespace"],
                        "resourceVersion": d["metadata"]["resourceVersion"],
                    },
                    "spec": {"replicas": d["spec"]["replicas"]},
                    "status": {"replicas": d["status"]["replicas"], "selector": "app=api"},
                }

            def do_POST(self) -> None:
                url = self._record()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with kube.lock:
                    for pod in kube.pods:
                        m = pod["metadata"]
                        if url.path != f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}/eviction":
                            continue
                        kube.evictions.append(body)
                        want = (body.get("deleteOptions") or {}).get("preconditions", {}).get("uid")
                        if want is not None and want != m["uid"]:
                            return self._status(409, "Conflict")
                        if kube.pdb_allows == 0:
                            return self._status(429, "TooManyRequests")
                        kube.pdb_allows -= 1
                        kube._replace(pod)
                        return self._send(201, {"kind": "Status", "status": "Success"})
                return self._status(404, "NotFound")

            def do_DELETE(self) -> None:
                url = self._record()
                with kube.lock:
                    for pod in kube.pods:
                        m = pod["metadata"]
                        if url.path == f"/api/v1/namespaces/{m['namespace']}/pods/{m['name']}":
                            kube._replace(pod)
                            return self._send(200, pod)
                return self._status(404, "NotFound")

        return Handler
