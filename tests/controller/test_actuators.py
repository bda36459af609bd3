"""Actuators on real processes and cgroups (v1 here: this machine kind runs cpu, memory and
freezer on v1), on v2 fixture trees, and the Kubernetes ones against a fake API server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.cgroups import Layout
from controller.actuators import ACTUATORS, ActuatorError, HostEnv, get, host_env
from controller.actuators.process import get_ioprio
from controller.actuators.validate import BudgetExhausted, Toolbox, checks_for

ENV = host_env()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    time.sleep(0.1)
    yield p
    p.kill()
    p.wait()


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_every_actuator_has_a_class_and_a_schema() -> None:
    assert set(ACTUATORS) == {
        "renice",
        "ionice",
        "sigterm",
        "sigkill",
        "cgroup_cpu_quota",
        "cgroup_memory_soft_limit",
        "cgroup_freeze",
        "drop_page_cache",
        "restart_pod",
        "cordon_and_taint",
        "pause_rollout",
        "restart_deployment",
        "scale_deployment",
        "run_command",
    }
    classes = {n: a.safety_class for n, a in ACTUATORS.items()}
    # Every Kubernetes action says what shows whether it worked.
    kube = ("restart_pod", "cordon_and_taint", "pause_rollout", "restart_deployment", "scale_deployment")
    assert all(ACTUATORS[n].verify_signal for n in kube)
    assert classes["sigkill"] == "destructive" and classes["sigterm"] == "impacting"
    assert classes["renice"] == classes["cgroup_cpu_quota"] == "safe_reversible"
    assert classes["run_command"] == "impacting" and not ACTUATORS["run_command"].reversible


@pytest.mark.parametrize(
    ("name", "params", "problem"),
    [
        ("renice", {"pid": 1, "nice": 5}, "pid"),
        ("renice", {"pid": 100, "nice": 40}, "nice"),
        ("renice", {"pid": 100, "nice": 1, "extra": 1}, "extra"),
        ("cgroup_cpu_quota", {"cgroup": "../etc", "cores": 1}, "cgroup"),
        ("cgroup_cpu_quota", {"cgroup": "/a", "cores": 0}, "cores"),
        ("restart_pod", {"uid": "not-a-uid", "node": "n1"}, "uid"),
        ("pause_rollout", {"namespace": "Shop", "name": "api"}, "namespace"),
        ("pause_rollout", {"namespace": "shop", "name": "../x"}, "name"),
    ],
)
def test_bad_parameters_get_a_clear_error(name: str, params: dict[str, object], problem: str) -> None:
    with pytest.raises(ActuatorError, match=f"{name}: bad parameters: .*{problem}"):
        get(name, ENV).validate(params)


def test_renice_every_thread_and_roll_back(sleeper: subprocess.Popen[bytes]) -> None:
    act = get("renice", ENV)
    p = act.validate({"pid": sleeper.pid, "comm": comm(sleeper.pid), "nice": 7})
    assert "pid" in act.describe(p)
    before = act.probe(p)
    assert before["nice"] == os.getpriority(os.PRIO_PROCESS, sleeper.pid)
    done = act.apply(p, before)
    assert done.after["nice"] == 7 == os.getpriority(os.PRIO_PROCESS, sleeper.pid)
    assert act.settle(p, before, act.probe(p)) == "applied"
    assert done.rollback is not None
    act.rollback(p, done.rollback)
    assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == before["nice"]
    assert act.settle(p, before, act.probe(p)) == "not_applied"


def test_a_reused_pid_is_refused(sleeper: subprocess.Popen[bytes]) -> None:
    act = get("sigterm", ENV)
    p = act.validate({"pid": sleeper.pid, "comm": "postgres"})
    with pytest.raises(ActuatorError, match="not 'postgres'"):
        act.apply(p, act.probe(p))
    assert sleeper.poll() is None


@pytest.mark.root
def test_ionice_and_roll_back(sleeper: subprocess.Popen[bytes]) -> None:
    act = get("ionice", ENV)
    p = act.validate({"pid": sleeper.pid, "comm": comm(sleeper.pid), "class": "idle"})
    before = act.probe(p)
    done = act.apply(p, before)
    assert get_ioprio(sleeper.pid)[0] == "idle" and done.after["io_class"] == "idle"
    assert done.rollback is not None
    act.rollback(p, done.rollback)
    assert get_ioprio(sleeper.pid)[0] == before["io_class"]


@pytest.mark.parametrize(("name", "code"), [("sigterm", -15), ("sigkill", -9)])
def test_signals_end_the_process(sleeper: subprocess.Popen[bytes], name: str, code: int) -> None:
    act = get(name, ENV)
    p = act.validate({"pid": sleeper.pid, "comm": comm(sleeper.pid)})
    before = act.probe(p)
    assert before["alive"]
    done = act.apply(p, before)
    assert sleeper.wait(5) == code
    assert done.rollback is None
    assert act.settle(p, before, act.probe(p)) == "applied"
    with pytest.raises(ActuatorError, match="has no rollback"):
        act.rollback(p, {})


@pytest.fixture
def v1_cgroup() -> Iterator[str]:
    """The same cgroup in the v1 cpu, memory and freezer hierarchies (as systemd makes them)."""
    name = f"ilab-act-{os.getpid()}"
    dirs = [Path("/sys/fs/cgroup") / c / name for c in ("cpu", "memory", "freezer")]
    for d in dirs:
        d.mkdir()
    yield "/" + name
    for d in dirs:
        for _ in range(50):
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.05)


@pytest.mark.root
def test_v1_cpu_quota_applies_and_rolls_back(v1_cgroup: str) -> None:
    act = get("cgroup_cpu_quota", ENV)
    p = act.validate({"cgroup": v1_cgroup, "cores": 0.5})
    quota = Path(f"/sys/fs/cgroup/cpu{v1_cgroup}/cpu.cfs_quota_us")
    before = act.probe(p)
    assert before["version"] == 1 and before["quota_us"] is None and quota.read_text().strip() == "-1"
    done = act.apply(p, before)
    assert quota.read_text().strip() == str(before["period_us"] // 2)
    assert act.settle(p, before, act.probe(p)) == "applied"
    assert done.rollback is not None
    act.rollback(p, done.rollback)
    assert quota.read_text().strip() == "-1"


@pytest.mark.root
def test_v1_memory_soft_limit_applies_and_rolls_back(v1_cgroup: str) -> None:
    act = get("cgroup_memory_soft_limit", ENV)
    p = act.validate({"cgroup": v1_cgroup, "bytes": 256 << 20})
    soft = Path(f"/sys/fs/cgroup/memory{v1_cgroup}/memory.soft_limit_in_bytes")
    before = act.probe(p)
    assert before["limit"] is None
    done = act.apply(p, before)
    assert int(soft.read_text()) == 256 << 20
    assert done.rollback is not None
    act.rollback(p, done.rollback)
    assert act.probe(p)["limit"] is None


@pytest.mark.root
def test_v1_freeze_stops_the_processes_and_thaw_restores(v1_cgroup: str) -> None:
    ticker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"open('/sys/fs/cgroup/freezer{v1_cgroup}/cgroup.procs', 'w')"
            ".write(str(__import__('os').getpid()))\n"
            "import time\nwhile True: print(time.time(), flush=True); time.sleep(0.01)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert ticker.stdout is not None
        ticker.stdout.readline()
        act = get("cgroup_freeze", ENV)
        p = act.validate({"cgroup": v1_cgroup})
        before = act.probe(p)
        done = act.apply(p, before)
        assert done.after["frozen"] and Path(f"/proc/{ticker.pid}/stat").read_text().split()[2] in "DS"
        assert done.rollback == {"frozen": False}
        act.rollback(p, done.rollback)
        assert not act.probe(p)["frozen"]
        ticker.stdout.readline()  # it ticks again
    finally:
        ticker.kill()
        ticker.wait()
        if ticker.stdout is not None:
            ticker.stdout.close()


def v2_tree(tmp_path: Path) -> HostEnv:
    root = tmp_path / "cgroup"
    (root / "app").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory io pids\n")
    (root / "app" / "cpu.max").write_text("max 100000\n")
    (root / "app" / "memory.high").write_text("max\n")
    (root / "app" / "memory.current").write_text(str(1 << 30) + "\n")
    (root / "app" / "cgroup.freeze").write_text("0\n")
    (root / "app" / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    return HostEnv(cgroups=Layout(v2=root, v1={}))


def test_v2_cpu_max_and_memory_high_on_a_fixture_tree(tmp_path: Path) -> None:
    env = v2_tree(tmp_path)
    cpu = get("cgroup_cpu_quota", env)
    p = cpu.validate({"cgroup": "/app", "cores": 1.5})
    before = cpu.probe(p)
    assert before == {"version": 2, "quota_us": None, "period_us": 100000}
    done = cpu.apply(p, before)
    assert (tmp_path / "cgroup/app/cpu.max").read_text() == "150000 100000"
    assert done.rollback is not None
    cpu.rollback(p, done.rollback)
    assert (tmp_path / "cgroup/app/cpu.max").read_text() == "max 100000"

    mem = get("cgroup_memory_soft_limit", env)
    q = mem.validate({"cgroup": "/app"})
    before = mem.probe(q)
    done = mem.apply(q, before)
    assert int((tmp_path / "cgroup/app/memory.high").read_text()) == int((1 << 30) * 0.9) // 4096 * 4096
    assert done.rollback is not None
    mem.rollback(q, done.rollback)
    assert (tmp_path / "cgroup/app/memory.high").read_text() == "max"


def test_v2_freeze_writes_cgroup_freeze(tmp_path: Path) -> None:
    env = v2_tree(tmp_path)
    act = get("cgroup_freeze", env)
    act.wait_s = 0.1  # type: ignore[attr-defined]  # nothing in a fixture tree thaws or freezes
    p = act.validate({"cgroup": "/app"})
    act.apply(p, act.probe(p))
    assert (tmp_path / "cgroup/app/cgroup.freeze").read_text() == "1"


def test_a_missing_controller_or_cgroup_is_a_clear_error(tmp_path: Path) -> None:
    env = v2_tree(tmp_path)
    cpu = get("cgroup_cpu_quota", env)
    with pytest.raises(ActuatorError, match="does not exist"):
        cpu.probe(cpu.validate({"cgroup": "/nope", "cores": 1}))
    mem = get("cgroup_memory_soft_limit", HostEnv(cgroups=Layout(v2=None, v1={})))
    with pytest.raises(ActuatorError, match="no memory cgroup controller"):
        mem.probe(mem.validate({"cgroup": "/app"}))


def test_drop_page_cache_on_a_fixture_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "sys" / "vm").mkdir(parents=True)
    (proc / "sys" / "vm" / "drop_caches").write_text("")
    (proc / "meminfo").write_text("MemTotal: 100 kB\nCached:  4096 kB\n")
    act = get("drop_page_cache", HostEnv(proc_root=proc))
    p = act.validate({})
    done = act.apply(p, act.probe(p))
    assert (proc / "sys" / "vm" / "drop_caches").read_text() == "1"
    assert done.rollback is None and act.settle(p, {}, {}) == "unknown"


def test_validation_tools_answer_and_stop_at_the_budget(sleeper: subprocess.Popen[bytes]) -> None:
    box = Toolbox(ENV, max_calls=3, max_iterations=1)
    assert box.iteration() and not box.iteration()
    checks = checks_for("cpu_saturation", {"pid": sleeper.pid, "comm": comm(sleeper.pid), "cgroup": "/"})
    answers = [box.call(t, **a) for t, a in checks]
    assert answers[0] == {"pid": sleeper.pid, "exists": True, "comm": comm(sleeper.pid)}
    assert answers[-1]["resource"] == "cpu" and answers[-1]["available"]
    with pytest.raises(BudgetExhausted):
        box.call("psi_now", resource="io")
    assert len(box.calls) == 3
    bad = Toolbox(ENV, max_calls=5, max_iterations=1).call("psi_now", resource="disk")
    assert "error" in bad


def test_cordon_and_taint_then_roll_back_through_the_client() -> None:
    from controller.actuators import KubeTarget

    from .fake_kube import FakeKube

    with FakeKube() as kube:
        env = HostEnv(kube=KubeTarget(kube.url, token="t0ken-for-the-fake-api"))
        act = get("cordon_and_taint", env)
        p = act.validate({"node": "node-1", "value": "gpu-xid"})
        before = act.probe(p)
        assert before["unschedulable"] is False and not before["tainted"]
        done = act.apply(p, before)
        assert kube.node["spec"]["unschedulable"] is True
        assert {"key": "incidentlab.io/quarantine", "value": "gpu-xid", "effect": "NoSchedule"} in kube.node[
            "spec"
        ]["taints"]
        assert act.settle(p, before, act.probe(p)) == "applied"
        assert done.rollback is not None
        act.rollback(p, done.rollback)
        assert kube.node["spec"] == {
            "unschedulable": False,
            "taints": [{"key": "team", "value": "ml", "effect": "NoSchedule"}],
        }
        assert all(auth == "Bearer t0ken-for-the-fake-api" for _, _, auth in kube.requests)
        # A node changed since it was read: 409, not a silent overwrite.
        stale = dict(before, resource_version="0")
        with pytest.raises(ActuatorError, match="409"):
            act.apply(p, stale)


def test_pause_rollout_then_resume_through_the_client() -> None:
    from controller.actuators import KubeTarget

    from .fake_kube import DEPLOYMENT, FakeKube

    with FakeKube() as kube:
        act = get("pause_rollout", HostEnv(kube=KubeTarget(kube.url)))
        assert act.safety_class == "impacting" and act.reversible
        p = act.validate({"namespace": "shop", "name": "api"})
        before = act.probe(p)
        assert before == {"paused": False, "replicas": 6, "updated_replicas": 3, "resource_version": "7"}

        def paused() -> object:
            return kube.deployment["spec"].get("paused")

        done = act.apply(p, before)
        assert paused() is True and done.after["paused"] is True
        assert ("PATCH", DEPLOYMENT, None) in kube.requests
        assert act.settle(p, before, act.probe(p)) == "applied"
        assert done.rollback == {"paused": False}
        act.rollback(p, done.rollback)
        assert paused() is False
        with pytest.raises(ActuatorError, match="409"):
            act.apply(p, before)  # read at resourceVersion 7: the deployment moved on since
        missing = act.validate({"namespace": "shop", "name": "gone"})
        with pytest.raises(ActuatorError, match="404"):
            act.probe(missing)


def test_restart_pod_finds_it_by_uid_on_its_node() -> None:
    from controller.actuators import KubeTarget

    from .fake_kube import POD_UID, FakeKube

    with FakeKube() as kube:
        act = get("restart_pod", HostEnv(kube=KubeTarget(kube.url)))
        p = act.validate({"uid": POD_UID, "node": "node-1"})
        before = act.probe(p)
        assert before == {"exists": True, "namespace": "ml", "name": "trainer-0"}
        done = act.apply(p, before)
        assert done.after == {"exists": False} and done.rollback is None
        assert ("POST", "/api/v1/namespaces/ml/pods/trainer-0/eviction", None) in kube.requests
        assert not [r for r in kube.requests if r[0] == "DELETE"]  # evicted, never deleted outright
        (eviction,) = kube.evictions
        assert eviction["kind"] == "Eviction" and eviction["deleteOptions"]["preconditions"]["uid"] == POD_UID
        assert act.settle(p, before, act.probe(p)) == "applied"
        with pytest.raises(ActuatorError, match="not on node"):
            act.apply(p, act.probe(p))


def test_restart_pod_respects_the_disruption_budget() -> None:
    from controller.actuators import KubeTarget

    from .fake_kube import POD_UID, FakeKube

    with FakeKube() as kube:
        kube.pdb_allows = 0
        act = get("restart_pod", HostEnv(kube=KubeTarget(kube.url)))
        p = act.validate({"uid": POD_UID, "node": "node-1"})
        before = act.probe(p)
        with pytest.raises(ActuatorError, match=r"PodDisruptionBudget allows no disruption now.*429"):
            act.apply(p, before)
        assert act.probe(p) == before  # still there
        assert act.settle(p, before, act.probe(p)) == "not_applied"


def test_a_rotated_token_is_read_for_each_action(tmp_path: Path) -> None:
    from controller.actuators import KubeTarget

    from .fake_kube import FakeKube

    token = tmp_path / "token"
    token.write_text("first-token")
    with FakeKube() as kube:
        act = get("pause_rollout", HostEnv(kube=KubeTarget(kube.url, token_file=str(token))))
        p = act.validate({"namespace": "shop", "name": "api"})
        act.probe(p)
        token.write_text("rotated-token\n")
        act.probe(p)
        assert [auth for _, _, auth in kube.requests] == ["Bearer first-token", "Bearer rotated-token"]
        token.unlink()
        with pytest.raises(ActuatorError, match="cannot read the Kubernetes token"):
            act.probe(p)


def test_no_kubernetes_api_configured_is_a_clear_error() -> None:
    act = get("restart_pod", HostEnv())
    with pytest.raises(ActuatorError, match="no Kubernetes API configured"):
        act.probe(act.validate({"uid": "0b1c2d3e-aaaa-bbbb-cccc-000000000042", "node": "n"}))


def test_a_pid_reused_by_a_program_of_the_same_name_is_refused(sleeper: subprocess.Popen[bytes]) -> None:
    act = get("renice", ENV)
    p = act.validate({"pid": sleeper.pid, "comm": comm(sleeper.pid), "nice": 5})
    before = act.probe(p)
    assert before["start_time"] is not None
    with pytest.raises(ActuatorError, match="reused by another process"):
        act.apply(p, before | {"start_time": before["start_time"] - 1})
    assert os.getpriority(os.PRIO_PROCESS, sleeper.pid) == before["nice"]
    kill = get("sigkill", ENV)
    with pytest.raises(ActuatorError, match="reused by another process"):
        kill.apply(kill.validate({"pid": sleeper.pid}), {"start_time": 1})
    assert sleeper.poll() is None


def test_restart_deployment_rolls_out_through_the_client() -> None:
    from controller.actuators import KubeTarget
    from controller.actuators.kube import RESTARTED_AT

    from .fake_kube import DEPLOYMENT, FakeKube

    with FakeKube() as kube:
        act = get("restart_deployment", HostEnv(kube=KubeTarget(kube.url)))
        # Putting the annotation back would restart the pods again: not a rollback.
        assert act.safety_class == "impacting" and not act.reversible and act.verify_signal
        p = act.validate({"namespace": "shop", "name": "api"})
        before = act.probe(p)
        assert before["restarted_at"] is None and before["resource_version"] == "7"

        def annotation() -> object:
            meta = kube.deployment["spec"]["template"]["metadata"]
            return (meta.get("annotations") or {}).get(RESTARTED_AT)

        kube.deployment["metadata"]["resourceVersion"] = "8"  # a status update since the probe
        done = act.apply(p, before)  # no resourceVersion in the patch, as kubectl's: no 409
        stamp = annotation()
        assert isinstance(stamp, str) and stamp.endswith("Z")  # an RFC 3339 time
        assert kube.deployment["spec"]["template"]["metadata"]["labels"] == {"app": "api"}  # merged, kept
        assert ("PATCH", DEPLOYMENT, None) in kube.requests and done.rollback is None
        assert act.settle(p, before, act.probe(p)) == "applied"
        assert act.settle(p, before, before) == "not_applied"


def test_scale_deployment_to_a_count_or_by_a_step_and_back() -> None:
    from controller.actuators import KubeTarget

    from .fake_kube import DEPLOYMENT, FakeKube

    with FakeKube() as kube:
        act = get("scale_deployment", HostEnv(kube=KubeTarget(kube.url)))
        assert act.safety_class == "impacting" and act.reversible
        p = act.validate({"namespace": "shop", "name": "api", "by": 2, "max_replicas": 7})
        before = act.probe(p)
        assert before == {"replicas": 6, "ready": 6, "resource_version": "7"}
        assert act.desired(p, before) == {"replicas": 7}  # 6 + 2, never past max_replicas
        done = act.apply(p, before)
        assert kube.deployment["spec"]["replicas"] == 7 and done.rollback == {"replicas": 6}
        assert ("PATCH", DEPLOYMENT + "/scale", None) in kube.requests
        assert act.settle(p, before, act.probe(p)) == "applied"
        act.rollback(p, done.rollback)
        assert kube.deployment["spec"]["replicas"] == 6
        # A step up on a Deployment already past max_replicas leaves it be, never scales down.
        past = act.validate({"namespace": "shop", "name": "api", "by": 1, "max_replicas": 3})
        assert act.desired(past, {"replicas": 6}) == {"replicas": 6}
        down = act.validate({"namespace": "shop", "name": "api", "by": -10})
        assert act.desired(down, {"replicas": 6}) == {"replicas": 0}
        to = act.validate({"namespace": "shop", "name": "api", "replicas": 0})
        act.apply(to, act.probe(to))
        assert kube.deployment["spec"]["replicas"] == 0
        # Scaled by someone else after the read: refused by the API, said plainly, not retried.
        stale = act.probe(p)
        kube.deployment["metadata"]["resourceVersion"] = "99"
        with pytest.raises(ActuatorError, match=r"replica count changed since it was read .*409"):
            act.apply(p, stale)
        assert kube.deployment["spec"]["replicas"] == 0
        for bad in ({}, {"replicas": 3, "by": 1}, {"replicas": 200, "max_replicas": 100}, {"by": 1000}):
            with pytest.raises(ActuatorError):
                act.validate({"namespace": "shop", "name": "api", **bad})
