"""deploy/kubernetes as a cluster admin applies it (kubectl apply -k overlays/...): every
manifest of each overlay valid against the Kubernetes API schemas (kubernetes-validate,
strict: an unknown field is an error), and what the manifests say agreeing with what the
code reads: the settings files the services load, the paths they name mounted where they
say, the ports, the probes, and RBAC granting exactly the verbs the Kubernetes actuators
call.

A small kustomize (resources, namespace, labels, images, strategic-merge patches) builds
the overlays; kubectl is not needed here."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # the oldest minor still supported upstream when this was written
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
CRDS = {"ServiceMonitor"}  # the Prometheus Operator's: checked by hand below


def merge(into: Any, patch: Any) -> Any:
    """A strategic merge as kubectl does for these shapes: maps merge, lists of named maps
    merge by name, anything else is replaced."""
    if isinstance(into, dict) and isinstance(patch, dict):
        out = dict(into)
        for k, v in patch.items():
            out[k] = merge(into[k], v) if k in into else v
        return out
    if (
        isinstance(into, list)
        and isinstance(patch, list)
        and all(isinstance(x, dict) and "name" in x for x in patch)
    ):
        out_list = [dict(x) for x in into]
        for p in patch:
            i = next(
                (n for n, x in enumerate(out_list) if isinstance(x, dict) and x.get("name") == p["name"]),
                None,
            )
            if i is None:
                out_list.append(p)
            else:
                out_list[i] = merge(out_list[i], p)
        return out_list
    return copy.deepcopy(patch)


def build(directory: Path) -> list[dict[str, Any]]:
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = directory / res
        if path.is_dir():
            docs.extend(build(path))
        else:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for p in k.get("patches", []):
        patch = yaml.safe_load((directory / p["path"]).read_text())
        at = next(
            i
            for i, d in enumerate(docs)
            if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]
        )
        docs[at] = merge(docs[at], patch)
    for d in docs:
        if "namespace" in k and d["kind"] not in CLUSTER_SCOPED:
            d["metadata"]["namespace"] = k["namespace"]
        for group in k.get("labels", []):
            d["metadata"].setdefault("labels", {}).update(group["pairs"])
        for image in k.get("images", []):
            for c in containers(d):
                if c["image"] == image["name"]:
                    c["image"] = f"{image['newName']}:{image['newTag']}"
    return docs


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    found: list[dict[str, Any]] = spec.get("containers", [])
    return found


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_is_valid_against_the_api_schemas(overlay: str) -> None:
    import kubernetes_validate

    docs = build(DEPLOY / "overlays" / overlay)
    kinds = sorted({d["kind"] for d in docs})
    assert {
        "DaemonSet",
        "Deployment",
        "Service",
        "ClusterRole",
        "NetworkPolicy",
        "PodDisruptionBudget",
    } <= set(kinds)
    for d in docs:
        if d["kind"] in CRDS:
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)  # raises, naming the field
    for sm in [d for d in docs if d["kind"] == "ServiceMonitor"]:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        name = sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        ports = {p["name"] for p in one(docs, "Service", name)["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= ports


def test_a_manifest_with_a_wrong_field_is_refused() -> None:
    import kubernetes_validate

    ds = one(build(DEPLOY / "overlays" / "default"), "DaemonSet", "incidentlab-collector")
    ds["spec"]["template"]["spec"]["hostPIDs"] = True  # a typo kubectl would also refuse
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def mounts_of(doc: dict[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (volumeMount, volume) of the pod's first container."""
    spec = doc["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in containers(doc)[0]["volumeMounts"]}


def under(path: str, mounts: dict[str, Any]) -> str:
    """The mountPath a file lives under (the longest that is a prefix of it)."""
    best = max(
        (m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len, default=None
    )
    assert best is not None, f"{path} is under no mount"
    return best


def test_the_collector_daemonset_mounts_what_its_settings_read() -> None:
    from collector.config import CollectorSettings

    docs = build(DEPLOY / "overlays" / "default")
    ds = one(docs, "DaemonSet", "incidentlab-collector")
    cm = one(docs, "ConfigMap", "incidentlab-collector")
    settings = CollectorSettings.model_validate(yaml.safe_load(cm["data"]["collector.yaml"]))
    spec, (c,) = ds["spec"]["template"]["spec"], containers(ds)
    assert spec["hostPID"] and spec["hostNetwork"]
    assert c["command"][-1] == "/etc/incidentlab/collector.yaml"
    mounts = mounts_of(ds)
    assert "/etc/incidentlab/collector.yaml" in mounts
    # The host's /proc and /sys, read-only, where procfs_root and sysfs_root say.
    for root, host in ((settings.procfs_root, "/proc"), (settings.sysfs_root, "/sys")):
        mount, volume = mounts[str(root)]
        assert mount["readOnly"] and volume["hostPath"]["path"] == host
    # The spool on the host (it outlives the pod), writable; the token and CA from Secrets.
    mount, volume = mounts[under(str(settings.spool.dir), mounts)]
    assert not mount.get("readOnly") and "hostPath" in volume
    for f in (settings.transport.token_file, settings.transport.ca_file):
        assert f is not None and "secret" in mounts[under(str(f), mounts)][1]
    # host_id and the node from spec.nodeName; the metrics port where the ServiceMonitor scrapes.
    env = {e["name"]: e for e in c["env"]}
    for name in ("INCIDENTLAB_COLLECTOR_HOST_ID", "INCIDENTLAB_COLLECTOR_KUBERNETES__NODE_NAME"):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert settings.metrics.enabled
    assert env["INCIDENTLAB_COLLECTOR_METRICS__HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert c["securityContext"]["seccompProfile"]["type"] == "Unconfined"
    (port,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert port["containerPort"] == settings.metrics.port
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and "SYS_ADMIN" not in caps["add"]
    assert set(caps["add"]) == {
        "BPF",
        "PERFMON",
        "NET_ADMIN",
        "SYS_PTRACE",
        "SYS_RESOURCE",
        "DAC_READ_SEARCH",
    }
    assert {"operator": "Exists"} in spec["tolerations"]  # GPU and control-plane nodes too
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    gpu = containers(one(build(DEPLOY / "overlays" / "gpu"), "DaemonSet", "incidentlab-collector"))[0]
    gpu_env = {e["name"]: e.get("value") for e in gpu["env"]}
    assert gpu_env["NVIDIA_DRIVER_CAPABILITIES"] == "utility" and "INCIDENTLAB_COLLECTOR_HOST_ID" in gpu_env


def test_the_controller_deployment_agrees_with_its_settings_and_routes(tmp_path: Path) -> None:
    from controller.config import ControllerSettings

    docs = build(DEPLOY / "overlays" / "default")
    dep = one(docs, "Deployment", "incidentlab-controller")
    cm = one(docs, "ConfigMap", "incidentlab-controller")
    text = cm["data"]["controller.yaml"]
    raw = yaml.safe_load(text)
    # The controller reads its token files when it loads the settings: made here, where the
    # Secrets would put them, under tmp_path.
    for t in raw["auth"]["tokens"]:
        made = tmp_path / t["token_file"].lstrip("/")
        made.parent.mkdir(parents=True, exist_ok=True)
        made.write_text(secrets.token_hex(32))
    settings = ControllerSettings.model_validate(yaml.safe_load(text.replace(" /etc/", f" {tmp_path}/etc/")))
    (c,) = containers(dep)
    mounts = mounts_of(dep)
    files = [raw["tls_cert_file"], raw["tls_key_file"], *[t["token_file"] for t in raw["auth"]["tokens"]]]
    for f in files:
        assert "secret" in mounts[under(f, mounts)][1], f
    assert "emptyDir" in mounts[under(raw["data_dir"], mounts)][1]
    (port,) = c["ports"]
    assert port["containerPort"] == settings.port and settings.host == "0.0.0.0"
    env = {e["name"]: e for e in c["env"]}
    # PostgreSQL and S3 from Secrets, through the settings' own environment names.
    assert (
        env["INCIDENTLAB_CONTROLLER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        == "incidentlab-postgres"
    )
    assert env["INCIDENTLAB_CONTROLLER_PAYLOAD_URL"]["valueFrom"]["secretKeyRef"]["name"] == "incidentlab-s3"
    # The leader hint names a replica by a DNS name the headless Service gives it.
    advertise = env["INCIDENTLAB_CONTROLLER_HA__ADVERTISE_URL"]["value"]
    subdomain = dep["spec"]["template"]["spec"]["subdomain"]
    assert advertise == f"https://$(POD_NAME).{subdomain}.incidentlab.svc:{settings.port}"
    headless = one(docs, "Service", subdomain)
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    # Postmortems read runs through the API (metadata is in PostgreSQL), with mounted files.
    pm = raw["workflow"]["postmortems"]
    assert pm["source"] == f"https://incidentlab-controller.incidentlab.svc:{settings.port}"
    for f in (pm["token_file"], pm["ca_file"]):
        assert "secret" in mounts[under(f, mounts)][1], f
    assert env["HOME"]["value"].startswith("/tmp") and "emptyDir" in mounts[under("/tmp", mounts)][1]
    # The probes ask the routes that answer them.
    from controller.api.routes import router

    paths = {getattr(r, "path", None) for r in router.routes}
    assert c["readinessProbe"]["httpGet"]["path"] in paths and c["livenessProbe"]["httpGet"]["path"] in paths
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    pdb = one(docs, "PodDisruptionBudget", "incidentlab-controller")
    assert pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    kube = settings.workflow.execution.kubernetes
    assert kube is not None and str(kube.token_file).startswith(
        "/var/run/secrets/kubernetes.io/serviceaccount"
    )
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    # The collectors send to the Service the controller is behind.
    collector = yaml.safe_load(one(docs, "ConfigMap", "incidentlab-collector")["data"]["collector.yaml"])
    assert collector["transport"]["url"] == f"https://incidentlab-controller.incidentlab.svc:{settings.port}"


# What each Kubernetes actuator calls (controller/actuators/kube.py): (apiGroup, resource, verb).
ACTUATOR_CALLS = {
    "restart_pod": {("", "pods", "list"), ("", "pods/eviction", "create")},
    "cordon_and_taint": {("", "nodes", "get"), ("", "nodes", "patch")},
    "pause_rollout": {("apps", "deployments", "get"), ("apps", "deployments", "patch")},
    "restart_deployment": {("apps", "deployments", "get"), ("apps", "deployments", "patch")},
    "scale_deployment": {("apps", "deployments/scale", "get"), ("apps", "deployments/scale", "patch")},
}


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_rbac_grants_exactly_the_verbs_the_actuators_call() -> None:
    from controller.actuators import ACTUATORS
    from controller.workflow.roles.policy_gate import CLUSTER_ACTIONS

    assert set(ACTUATOR_CALLS) == set(CLUSTER_ACTIONS) <= set(ACTUATORS)
    docs = build(DEPLOY / "overlays" / "default")
    needed = set().union(*ACTUATOR_CALLS.values())
    assert granted(one(docs, "ClusterRole", "incidentlab-controller")) == needed
    # The collector reads its Node, its node's pods and their Jobs (for the CronJob), nothing else.
    assert granted(one(docs, "ClusterRole", "incidentlab-collector")) == {
        ("", "nodes", "get"),
        ("", "pods", "list"),
        ("batch", "jobs", "get"),
    }
    for binding in [d for d in docs if d["kind"] == "ClusterRoleBinding"]:
        (subject,) = binding["subjects"]
        assert subject["namespace"] == "incidentlab" and subject["name"] == binding["roleRef"]["name"]
