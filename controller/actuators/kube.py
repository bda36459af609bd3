"""Kubernetes actuators through the official client, each with its safety class, the
rollback data it keeps and the signal its verification reads (``verify_signal``):

- restart_pod: evict one pod (its PodDisruptionBudget permitting; a 429 changes nothing) so
  its controller starts a fresh one (impacting, no
  rollback; runnable only where ``execution.allow_without_rollback`` names it);
- cordon_and_taint: quarantine a node with a failing GPU (impacting; rollback restores
  its schedulability and taints);
- pause_rollout: stop a Deployment's rollout, what a fleet incident on one workload's
  pods proposes instead of acting on each node (impacting; rollback resumes it);
- restart_deployment: ``kubectl rollout restart`` (impacting, no rollback: runnable only
  where ``execution.allow_without_rollback`` names it);
- scale_deployment: replicas through the scale subresource, to a count or by a step
  (impacting; rollback: the previous count).

Updates carry the resourceVersion they were computed from, so a concurrent change answers
409 instead of being overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from controller.actuators.base import Actuator, ActuatorError, Applied, KubeTarget, Params, Settled, actuator

MAX_TAINTS = 32  # the taint list travels in the intent and the result: bounded
NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"


class PodParams(Params):
    # The collector sees a pod by its UID (from the cgroup path) on a node: the pod is
    # looked up among that node's pods, so a recreated pod (new UID) is never touched.
    uid: str = Field(pattern=r"^[0-9a-f-]{36}$")
    node: str = Field(pattern=NAME)


class QuarantineParams(Params):
    node: str = Field(pattern=NAME)
    key: str = Field(default="incidentlab.io/quarantine", max_length=253)
    value: str = Field(default="gpu", max_length=63, pattern=r"^[A-Za-z0-9_.-]*$")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class RolloutParams(Params):
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    name: str = Field(pattern=NAME)


@contextmanager
def core_api(target: KubeTarget | None) -> Iterator[Any]:
    """A CoreV1Api whose connection pool is closed after use (one action, a few calls)."""
    with _api(target, "CoreV1Api") as api:
        yield api


@contextmanager
def apps_api(target: KubeTarget | None) -> Iterator[Any]:
    """An AppsV1Api, likewise."""
    with _api(target, "AppsV1Api") as api:
        yield api


@contextmanager
def _api(target: KubeTarget | None, which: str) -> Iterator[Any]:
    if target is None:
        raise ActuatorError("no Kubernetes API configured (execution.kubernetes.host)")
    try:
        from kubernetes import client
    except ImportError:
        raise ActuatorError(
            "the kubernetes client is not installed (pip install 'incidentlab[kube]')"
        ) from None
    cfg = client.Configuration()
    cfg.host = target.host
    cfg.verify_ssl = target.verify_ssl
    cfg.ssl_ca_cert = target.ca_file
    cfg.retries = 1
    token = target.token
    if target.token_file:
        try:
            token = Path(target.token_file).read_text().strip()
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ActuatorError(f"cannot read the Kubernetes token {target.token_file}: {why}") from None
    if token:
        # "BearerToken" since client 36 (it still reads the older "authorization" key, but
        # then takes the prefix from the new one: without it the header lacks "Bearer").
        cfg.api_key = {"BearerToken": token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
    api_client = client.ApiClient(cfg)
    try:
        yield getattr(client, which)(api_client)
    finally:
        api_client.close()


def _api_error(what: str, exc: Exception) -> ActuatorError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc)
    return ActuatorError(f"{what}: Kubernetes API answered {status or 'nothing'}: {reason}")


def _call(what: str, fn: Any, *args: Any, explain: dict[int, str] | None = None, **kw: Any) -> Any:
    """fn through the client; an answer whose status ``explain`` names gets its own words."""
    try:
        return fn(*args, **kw, _request_timeout=10)
    except Exception as exc:  # ApiException, urllib3 errors: all become one clear error
        status = getattr(exc, "status", None)
        if explain and status in explain:
            raise ActuatorError(f"{what}: {explain[status]} (Kubernetes API answered {status})") from None
        raise _api_error(what, exc) from None


@actuator
class RestartPod(Actuator):
    name = "restart_pod"
    safety_class = "impacting"
    params_model = PodParams
    verify_signal = "a new pod of the same controller running, then the family's own signal"

    def describe(self, p: PodParams) -> str:
        return (
            f"evict pod {p.uid} on node {p.node} (its PodDisruptionBudget permitting) "
            "so that its controller starts a new one"
        )

    def probe(self, p: PodParams) -> dict[str, Any]:
        with core_api(self.env.kube) as api:
            pods = _call(
                f"listing the pods of node {p.node}",
                api.list_pod_for_all_namespaces,
                field_selector=f"spec.nodeName={p.node}",
            )
        for pod in pods.items:
            # A pod being deleted (deletionTimestamp set) counts as gone: the eviction took.
            if pod.metadata.uid == p.uid and not pod.metadata.deletion_timestamp:
                return {"exists": True, "namespace": pod.metadata.namespace, "name": pod.metadata.name}
        return {"exists": False}

    def desired(self, p: PodParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"exists": False}

    def apply(self, p: PodParams, before: dict[str, Any]) -> Applied:
        if not before.get("exists"):
            raise ActuatorError(f"pod {p.uid} is not on node {p.node}")
        ns, name = before["namespace"], before["name"]
        # Evicted, not deleted: the API honours the pod's PodDisruptionBudgets, as `kubectl
        # drain` does. The UID as a precondition: a pod recreated under the same name (a
        # StatefulSet's) is a different pod, and the API refuses it (409).
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
            "deleteOptions": {"preconditions": {"uid": p.uid}},
        }
        busy = "its PodDisruptionBudget allows no disruption now; nothing was deleted"
        with core_api(self.env.kube) as api:
            _call(
                f"evicting pod {ns}/{name}",
                api.create_namespaced_pod_eviction,
                name,
                ns,
                body,
                explain={429: busy},
            )
        return Applied(self.probe(p), None)


@actuator
class CordonAndTaint(Actuator):
    name = "cordon_and_taint"
    safety_class = "impacting"
    params_model = QuarantineParams
    reversible = True
    verify_signal = "the node unschedulable and tainted; no new pods land on it"

    def describe(self, p: QuarantineParams) -> str:
        return f"cordon node {p.node} and taint it {p.key}={p.value}:{p.effect}"

    def _node(self, p: QuarantineParams) -> Any:
        with core_api(self.env.kube) as api:
            return _call(f"reading node {p.node}", api.read_node, p.node)

    def probe(self, p: QuarantineParams) -> dict[str, Any]:
        node = self._node(p)
        taints = [{"key": t.key, "value": t.value, "effect": t.effect} for t in (node.spec.taints or [])]
        if len(taints) > MAX_TAINTS:
            raise ActuatorError(f"node {p.node} has {len(taints)} taints, more than this actuator rewrites")
        return {
            "unschedulable": bool(node.spec.unschedulable),
            "tainted": any(t["key"] == p.key and t["effect"] == p.effect for t in taints),
            "taints": taints,
            "resource_version": node.metadata.resource_version,
        }

    def desired(self, p: QuarantineParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"unschedulable": True, "tainted": True}

    def _patch(self, p: QuarantineParams, rv: str, unschedulable: bool, taints: list[dict[str, Any]]) -> None:
        body = {
            "metadata": {"resourceVersion": rv},
            "spec": {"unschedulable": unschedulable, "taints": taints},
        }
        with core_api(self.env.kube) as api:
            _call(f"patching node {p.node}", api.patch_node, p.node, body)

    def apply(self, p: QuarantineParams, before: dict[str, Any]) -> Applied:
        taints = [t for t in before["taints"] if not (t["key"] == p.key and t["effect"] == p.effect)]
        taints.append({"key": p.key, "value": p.value, "effect": p.effect})
        self._patch(p, before["resource_version"], True, taints)
        return Applied(self.probe(p), self.rollback_data(before))

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any]:
        return {"unschedulable": before["unschedulable"], "had_taint": before["tainted"]}

    def rollback(self, p: QuarantineParams, data: dict[str, Any]) -> dict[str, Any]:
        now = self.probe(p)
        taints = now["taints"]
        if not data["had_taint"]:
            taints = [t for t in taints if not (t["key"] == p.key and t["effect"] == p.effect)]
        self._patch(p, now["resource_version"], bool(data["unschedulable"]), taints)
        return self.probe(p)


@actuator
class PauseRollout(Actuator):
    name = "pause_rollout"
    safety_class = "impacting"
    params_model = RolloutParams
    reversible = True
    verify_signal = "updated replicas stop rising; the members' family signals"

    def describe(self, p: RolloutParams) -> str:
        return f"pause the rollout of deployment {p.namespace}/{p.name} (spec.paused: true)"

    def probe(self, p: RolloutParams) -> dict[str, Any]:
        with apps_api(self.env.kube) as api:
            d = _call(
                f"reading deployment {p.namespace}/{p.name}",
                api.read_namespaced_deployment,
                p.name,
                p.namespace,
            )
        status = d.status
        return {
            "paused": bool(d.spec.paused),
            "replicas": d.spec.replicas,
            "updated_replicas": getattr(status, "updated_replicas", None) if status else None,
            "resource_version": d.metadata.resource_version,
        }

    def desired(self, p: RolloutParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"paused": True}

    def _patch(self, p: RolloutParams, rv: str, paused: bool) -> None:
        body = {"metadata": {"resourceVersion": rv}, "spec": {"paused": paused}}
        with apps_api(self.env.kube) as api:
            _call(
                f"patching deployment {p.namespace}/{p.name}",
                api.patch_namespaced_deployment,
                p.name,
                p.namespace,
                body,
            )

    def apply(self, p: RolloutParams, before: dict[str, Any]) -> Applied:
        self._patch(p, before["resource_version"], True)
        return Applied(self.probe(p), self.rollback_data(before))

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any]:
        return {"paused": before["paused"]}

    def rollback(self, p: RolloutParams, data: dict[str, Any]) -> dict[str, Any]:
        now = self.probe(p)
        self._patch(p, now["resource_version"], bool(data["paused"]))
        return self.probe(p)


class ScaleParams(RolloutParams):
    """To a count (``replicas``) or by a step from the count now (``by``), never past
    ``max_replicas`` nor below 0."""

    replicas: int | None = Field(default=None, ge=0, le=10_000)
    by: int | None = Field(default=None, ge=-100, le=100)
    max_replicas: int = Field(default=100, ge=1, le=10_000)

    @model_validator(mode="after")
    def _one(self) -> ScaleParams:
        if (self.replicas is None) == (self.by is None):
            raise ValueError("give replicas or by, one of them")
        if self.replicas is not None and self.replicas > self.max_replicas:
            raise ValueError(f"replicas {self.replicas} is past max_replicas {self.max_replicas}")
        return self

    def target(self, now: int) -> int:
        """The count to set: a step goes its own way or stays (a Deployment already past
        max_replicas is not scaled down by a step up)."""
        if self.replicas is not None:
            return self.replicas
        by = self.by or 0
        if by > 0:
            return max(now, min(self.max_replicas, now + by))
        return min(now, max(0, now + by))


RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


@actuator
class RestartDeployment(Actuator):
    """``kubectl rollout restart``: the pod template's restartedAt annotation set to now, so
    the Deployment replaces its pods by its own rollout strategy. Impacting, and not
    reversible: putting the annotation back would only restart them again. It runs where
    ``execution.allow_without_rollback`` names it. The patch carries no resourceVersion
    (as kubectl's does not): a status update in between must not make it fail."""

    name = "restart_deployment"
    safety_class = "impacting"
    params_model = RolloutParams
    verify_signal = "the rollout completing (updated replicas), then the family's own signal"

    def describe(self, p: RolloutParams) -> str:
        return f"rollout restart of deployment {p.namespace}/{p.name}"

    def probe(self, p: RolloutParams) -> dict[str, Any]:
        with apps_api(self.env.kube) as api:
            what = f"reading deployment {p.namespace}/{p.name}"
            d = _call(what, api.read_namespaced_deployment, p.name, p.namespace)
        tmpl = d.spec.template.metadata if d.spec.template is not None else None
        annotations = (tmpl.annotations if tmpl is not None else None) or {}
        return {
            "restarted_at": annotations.get(RESTARTED_AT),
            "generation": d.metadata.generation,
            "resource_version": d.metadata.resource_version,
        }

    def desired(self, p: RolloutParams, before: dict[str, Any]) -> dict[str, Any] | None:
        return None  # a new timestamp: any value but the one before (settle says how)

    def settle(self, p: RolloutParams, before: dict[str, Any], now: dict[str, Any]) -> Settled:
        return "not_applied" if now.get("restarted_at") == before.get("restarted_at") else "applied"

    def apply(self, p: RolloutParams, before: dict[str, Any]) -> Applied:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
        with apps_api(self.env.kube) as api:
            _call(
                f"patching deployment {p.namespace}/{p.name}",
                api.patch_namespaced_deployment,
                p.name,
                p.namespace,
                body,
            )
        after = self.probe(p)
        if after["restarted_at"] == before["restarted_at"]:
            raise ActuatorError(f"deployment {p.namespace}/{p.name} kept its restartedAt annotation")
        return Applied(after, None)


@actuator
class ScaleDeployment(Actuator):
    """spec.replicas of a Deployment, through its scale subresource (what ``kubectl scale``
    does, and all an HPA-free RBAC role needs). Impacting; rollback: the previous count."""

    name = "scale_deployment"
    safety_class = "impacting"
    params_model = ScaleParams
    reversible = True
    verify_signal = "ready replicas, then the family's own signal"

    def describe(self, p: ScaleParams) -> str:
        how = f"to {p.replicas}" if p.replicas is not None else f"by {p.by:+d} (at most {p.max_replicas})"
        return f"scale deployment {p.namespace}/{p.name} {how} replicas"

    def probe(self, p: ScaleParams) -> dict[str, Any]:
        with apps_api(self.env.kube) as api:
            s = _call(
                f"reading the scale of deployment {p.namespace}/{p.name}",
                api.read_namespaced_deployment_scale,
                p.name,
                p.namespace,
            )
        return {
            "replicas": s.spec.replicas if s.spec is not None else None,
            "ready": getattr(s.status, "replicas", None) if s.status else None,
            "resource_version": s.metadata.resource_version,
        }

    def desired(self, p: ScaleParams, before: dict[str, Any]) -> dict[str, Any]:
        return {"replicas": p.target(int(before["replicas"] or 0))}

    def _patch(self, p: ScaleParams, rv: str, replicas: int) -> None:
        body = {"metadata": {"resourceVersion": rv}, "spec": {"replicas": replicas}}
        what = f"scaling deployment {p.namespace}/{p.name}"
        # A 409 is not retried from a fresh read: the approved step was computed from the count
        # read before it, and an HPA that moved it since would be fought, not helped.
        moved = (
            "its replica count changed since it was read (an autoscaler or someone else scaled it); "
            "nothing changed"
        )
        with apps_api(self.env.kube) as api:
            _call(
                what, api.patch_namespaced_deployment_scale, p.name, p.namespace, body, explain={409: moved}
            )

    def apply(self, p: ScaleParams, before: dict[str, Any]) -> Applied:
        self._patch(p, before["resource_version"], p.target(int(before["replicas"] or 0)))
        return Applied(self.probe(p), self.rollback_data(before))

    def rollback_data(self, before: dict[str, Any]) -> dict[str, Any]:
        return {"replicas": before["replicas"]}

    def rollback(self, p: ScaleParams, data: dict[str, Any]) -> dict[str, Any]:
        now = self.probe(p)
        self._patch(p, now["resource_version"], int(data["replicas"]))
        return self.probe(p)
