"""Where this host sits: topology labels for CollectorInfo (zone, region, node pool, ...).

Three sources, later ones filling only what earlier ones left: the collector's own
``labels:`` setting (always wins), the Downward API file of this pod's labels (where the
cluster copies topology labels onto pods, as Kubernetes 1.33's PodTopologyLabels
admission does), and the Node object read from the Kubernetes API with the pod's service
account. The API is read on a background thread at start and every ``refresh_s`` (never on
the sampling path); a failed read keeps the last labels it had and says why in
``state()``. Label names are short Prometheus-style names (``zone``, ``node_pool``); the
Kubernetes keys they come from are listed in WELL_KNOWN.

Parsing is apart from reading: ``parse_downward_labels`` and ``node_labels`` take text and
dicts and are tested on strings.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.errors import TopologyError

if TYPE_CHECKING:
    from collector.config import CollectorSettings

LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}\Z")
MAX_LABELS = 32
MAX_VALUE = 128
MAX_PODS_BYTES = 16 << 20  # a node's pods (at most a few hundred, each some KiB)
MAX_PODS = 1000
# Jobs whose owner (a CronJob, or none) is looked up per refresh, and remembered at most.
MAX_JOB_LOOKUPS = 32
MAX_JOBS_KNOWN = 1024
# Short name -> the Kubernetes node labels it is read from, first present wins.
WELL_KNOWN: dict[str, tuple[str, ...]] = {
    "zone": ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone"),
    "region": ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region"),
    "instance_type": ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type"),
    "gpu_product": ("nvidia.com/gpu.product",),
    "node_pool": (
        "cloud.google.com/gke-nodepool",
        "eks.amazonaws.com/nodegroup",
        "kubernetes.azure.com/agentpool",
        "karpenter.sh/nodepool",
        "node.kubernetes.io/pool",
    ),
    "rack": ("topology.kubernetes.io/rack", "topology.incidentlab.io/rack"),
}


def check_labels(labels: Mapping[str, str], where: str) -> dict[str, str]:
    """The labels as given, or TopologyError naming the first bad one."""
    if len(labels) > MAX_LABELS:
        raise TopologyError(f"{where}: {len(labels)} labels, at most {MAX_LABELS}")
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_NAME.match(k):
            raise TopologyError(f"{where}: label name {k!r} must match {LABEL_NAME.pattern}")
        if not isinstance(v, str) or len(v) > MAX_VALUE or not v.isprintable():
            raise TopologyError(
                f"{where}: label {k}: the value must be printable text of at most {MAX_VALUE}"
            )
    return dict(labels)


def short_name(key: str) -> str | None:
    """A Kubernetes label key as a label name (``team.example.com/tier`` -> ``tier``), or None."""
    name = re.sub(r"[^a-z0-9_]", "_", key.rsplit("/", 1)[-1].lower())
    return name if LABEL_NAME.match(name) else None


def _pick(found: Mapping[str, str], extra: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, keys in WELL_KNOWN.items():
        for k in keys:
            v = found.get(k)
            if isinstance(v, str) and v and len(v) <= MAX_VALUE and v.isprintable():
                out[name] = v
                break
    for k in extra:
        x, short = found.get(k), short_name(k)
        if short and short not in out and isinstance(x, str) and len(x) <= MAX_VALUE and x.isprintable():
            out[short] = x
    return out


def node_labels(node: Any, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """The topology labels of a Kubernetes Node object (a decoded GET /api/v1/nodes/NAME)."""
    meta = node.get("metadata") if isinstance(node, dict) else None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict):
        raise TopologyError("the node object has no metadata.labels")
    out = _pick(labels, extra)
    name = meta.get("name") if isinstance(meta, dict) else None
    if isinstance(name, str) and name:
        out["node"] = name[:MAX_VALUE]
    return out


def pod_owners(pod_list: Any) -> dict[str, dict[str, str]]:
    """Pod UID -> {namespace, pod, workload} from a decoded pod list (GET /api/v1/pods).

    The workload is ``<namespace>/<kind>/<name>`` of the pod's controller, a ReplicaSet
    named by its Deployment (the ReplicaSet's name less its ``-<pod-template-hash>``), so
    the same Deployment's pods on every node share one; a bare pod is ``<ns>/Pod/<name>``."""
    items = pod_list.get("items") if isinstance(pod_list, dict) else None
    if not isinstance(items, list):
        raise TopologyError("the pod list has no items")
    out: dict[str, dict[str, str]] = {}
    for item in items[:MAX_PODS]:
        meta = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(meta, dict):
            continue
        uid, ns, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
        if not (isinstance(uid, str) and isinstance(ns, str) and isinstance(name, str)):
            continue
        owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, dict)]
        ctrl = next((o for o in owners if o.get("controller")), owners[0] if owners else None)
        kind, owner = ("Pod", name) if ctrl is None else (str(ctrl.get("kind")), str(ctrl.get("name")))
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        tmpl = labels.get("pod-template-hash") if isinstance(labels, dict) else None
        if kind == "ReplicaSet" and isinstance(tmpl, str) and owner.endswith("-" + tmpl):
            kind, owner = "Deployment", owner[: -len(tmpl) - 1]
        out[uid] = {"namespace": ns, "pod": name, "workload": f"{ns}/{kind}/{owner}"[:253]}
    return out


def job_owner(job: Any) -> str | None:
    """The CronJob that made a Job (GET /apis/batch/v1/namespaces/NS/jobs/NAME), as
    ``<namespace>/CronJob/<name>``; None for a Job nothing owns."""
    meta = job.get("metadata") if isinstance(job, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("namespace"), str):
        raise TopologyError("the Job has no metadata.namespace")
    owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, dict)]
    ctrl = next((o for o in owners if o.get("controller")), None)
    if ctrl is None or ctrl.get("kind") != "CronJob" or not isinstance(ctrl.get("name"), str):
        return None
    return f"{meta['namespace']}/CronJob/{ctrl['name']}"[:253]


_RUNTIME_ID = re.compile(r"^[a-z0-9.-]+://([0-9a-f]{12,64})$")


def container_names(pod_list: Any) -> dict[str, str]:
    """Container id -> container name, from the pods' (init) container statuses, whose ids
    carry the runtime's scheme (containerd://, cri-o://, docker://) before the id the
    cgroup path holds."""
    items = pod_list.get("items") if isinstance(pod_list, dict) else None
    if not isinstance(items, list):
        raise TopologyError("the pod list has no items")
    out: dict[str, str] = {}
    for item in items[:MAX_PODS]:
        status = item.get("status") if isinstance(item, dict) else None
        if not isinstance(status, dict):
            continue
        for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
            for c in status.get(key) or []:
                if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                    continue
                m = _RUNTIME_ID.match(str(c.get("containerID") or ""))
                if m:
                    out[m.group(1)] = c["name"][:253]
    return out


_DOWNWARD_LINE = re.compile(r'^([A-Za-z0-9._/-]{1,316})="(.*)"\Z')


def parse_downward_labels(text: str) -> dict[str, str]:
    """A Downward API labels file (``key="value"`` per line, Go-quoted) as a dict."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _DOWNWARD_LINE.match(line)
        if m is None:
            raise TopologyError(f'downward labels line {n}: not key="value"')
        try:
            out[m.group(1)] = json.loads(f'"{m.group(2)}"')
        except json.JSONDecodeError as exc:
            raise TopologyError(f"downward labels line {n}: bad quoting ({exc.msg})") from None
    return out


class Topology:
    """The host's labels now: static, then the Downward API file, then the Node object."""

    def __init__(
        self,
        static: Mapping[str, str],
        *,
        node_name: str | None = None,
        api_url: str = "https://kubernetes.default.svc",
        token_file: Path | None = None,
        ca_file: Path | None = None,
        downward_file: Path | None = None,
        extra_keys: tuple[str, ...] = (),
        refresh_s: float = 300.0,
        timeout_s: float = 5.0,
        opener: Callable[[urllib.request.Request, float], bytes] | None = None,
    ) -> None:
        self.static = check_labels(static, "labels")
        self.node_name = node_name
        self.api_url = api_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file
        self.downward_file = downward_file
        self.extra_keys = extra_keys
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._open = opener or self._urlopen
        self._lock = threading.Lock()
        self._node: dict[str, str] = {}
        self._pods: dict[str, dict[str, str]] = {}
        self._containers: dict[str, str] = {}  # container id -> its name, on this node
        self._jobs: list[str] = []  # the Jobs whose pods are on this node, "<ns>/Job/<name>"
        self._job_owners: dict[str, str | None] = {}  # a Job -> its CronJob's workload, or None
        self._downward: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading ---------------------------------------------------------------------------------

    def _urlopen(self, req: urllib.request.Request, timeout: float) -> bytes:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            body: bytes = resp.read(MAX_PODS_BYTES + 1)
        if len(body) > MAX_PODS_BYTES:
            raise TopologyError(f"the answer is over {MAX_PODS_BYTES} bytes")
        return body

    def _get(self, path: str) -> Any:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:
            headers["Authorization"] = "Bearer " + self.token_file.read_text().strip()
        req = urllib.request.Request(self.api_url + path, headers=headers)
        return json.loads(self._open(req, self.timeout_s))

    def refresh(self) -> None:
        """Read the Downward API file, the Node object and the node's pods once; errors are
        kept, not raised."""
        if self.downward_file is not None:
            try:
                found = parse_downward_labels(self.downward_file.read_text(errors="replace"))
                with self._lock:
                    self._downward = _pick(found, self.extra_keys)
                    self._errors.pop("downward", None)
            except (OSError, TopologyError) as exc:
                with self._lock:
                    self._errors["downward"] = f"{self.downward_file}: {exc}"
        if self.node_name:
            node = urllib.parse.quote(self.node_name, safe="")
            self._read(
                "node",
                f"/api/v1/nodes/{node}",
                lambda doc: setattr(self, "_node", node_labels(doc, self.extra_keys)),
            )
            selector = urllib.parse.quote(f"spec.nodeName={self.node_name}", safe="")
            # resourceVersion=0: the API server's watch cache answers, not a quorum read of
            # etcd for every node at once.
            self._read(
                "pods",
                f"/api/v1/pods?fieldSelector={selector}&resourceVersion=0",
                self._take_pods,
            )
            self._name_cronjobs()

    def _take_pods(self, doc: Any) -> None:
        self._pods = pod_owners(doc)
        self._containers = container_names(doc)
        self._jobs = sorted({w for p in self._pods.values() if (w := p["workload"]).split("/")[1] == "Job"})
        self._apply_job_owners()

    def _apply_job_owners(self) -> None:
        for pod in self._pods.values():
            cron = self._job_owners.get(pod["workload"])
            if cron is not None:
                pod["workload"] = cron

    def _name_cronjobs(self) -> None:
        """A Job's pods are named by the CronJob that made the Job, when one did: one GET per
        Job not seen before (at most MAX_JOB_LOOKUPS a refresh), remembered while its pods are
        on this node."""
        with self._lock:
            on_node = set(self._jobs)
            self._job_owners = {j: o for j, o in self._job_owners.items() if j in on_node}
            unknown = [j for j in self._jobs if j not in self._job_owners][:MAX_JOB_LOOKUPS]
        for workload in unknown:
            if len(self._job_owners) >= MAX_JOBS_KNOWN:
                break
            ns, _, name = workload.split("/", 2)
            quoted = urllib.parse.quote(ns, safe=""), urllib.parse.quote(name, safe="")
            path = "/apis/batch/v1/namespaces/{}/jobs/{}".format(*quoted)
            try:
                owner = job_owner(self._get(path))
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # a Job already gone has no CronJob to name; RBAC or worse: stop
                    with self._lock:
                        self._errors["jobs"] = f"GET {path}: HTTP {exc.code} {exc.reason}"
                    return
                owner = None
            except (OSError, ValueError, TopologyError) as exc:
                with self._lock:
                    self._errors["jobs"] = f"GET {path}: {exc}"
                return
            with self._lock:
                self._job_owners[workload] = owner
        with self._lock:
            self._errors.pop("jobs", None)
            self._apply_job_owners()

    def _read(self, what: str, path: str, take: Callable[[Any], None]) -> None:
        try:
            doc = self._get(path)
            with self._lock:
                take(doc)
                self._errors.pop(what, None)
        except urllib.error.HTTPError as exc:
            with self._lock:
                self._errors[what] = f"GET {path}: HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError, TopologyError) as exc:  # URLError is an OSError
            with self._lock:
                self._errors[what] = f"GET {path}: {exc}"

    def pod(self, uid: str) -> dict[str, str] | None:
        """Namespace, pod name and workload of a pod on this node (None: not known, or off Kubernetes)."""
        with self._lock:
            return self._pods.get(uid)

    def name_pods(self, snapshot: dict[str, Any]) -> None:
        """Process rows of a pod get its namespace, name and workload (what a culprit's
        service is), and their container's name."""
        proc = snapshot.get("sources", {}).get("processes")
        data = proc.get("data") if isinstance(proc, dict) else None
        if not isinstance(data, dict) or not self._pods:
            return
        for row in data.get("rows") or []:
            uid = row.get("pod_uid") if isinstance(row, dict) else None
            meta = self.pod(uid) if isinstance(uid, str) else None
            if meta is not None:
                row.update(meta)
                with self._lock:
                    name = self._containers.get(str(row.get("container_id") or ""))
                if name is not None:
                    row["container"] = name

    def labels(self) -> dict[str, str]:
        with self._lock:
            out = dict(self._node) | self._downward
        out |= self.static
        # Bounded whatever the cluster holds: static first, then the rest in name order.
        if len(out) > MAX_LABELS:
            keep = list(self.static) + sorted(k for k in out if k not in self.static)
            out = {k: out[k] for k in keep[:MAX_LABELS]}
        return out

    def state(self) -> dict[str, Any]:
        """For CollectorInfo: where the labels came from and what failed."""
        with self._lock:
            sources = ["settings"] if self.static else []
            if self._downward:
                sources.append("downward_api")
            if self._node:
                sources.append("kubernetes_api")
            return {"sources": sources, "errors": dict(self._errors)}

    # --- the refresh thread ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None or (self.node_name is None and self.downward_file is None):
            return
        self._thread = threading.Thread(target=self._loop, name="collector-topology", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 1)


def topology_from(settings: CollectorSettings) -> Topology:
    k = settings.kubernetes
    if k is None:
        return Topology(settings.labels)
    return Topology(
        settings.labels,
        node_name=k.node_name,
        api_url=k.api_url,
        token_file=k.token_file,
        ca_file=k.ca_file,
        downward_file=k.downward_labels_file,
        extra_keys=tuple(k.node_label_keys),
        refresh_s=k.refresh_s,
        timeout_s=k.timeout_s,
    )
