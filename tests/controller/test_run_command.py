"""run_command: the runbook commands listed in execution.commands and nothing else. Tried as a
hostile proposal would: values that read as flags, path climbs or a second command, an argv
longer or shorter than the listed one, a command not listed, one that prints without end,
one that outlives its timeout with children, and the controller's own environment."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from controller.actuators import ActuatorError, HostEnv, get
from controller.actuators.command import OUTPUT_TAIL_BYTES, matches, render, safe_value
from controller.config import CommandSettings, ExecutionSettings
from controller.store.db import make_engine, migrate
from controller.store.runs import RunStore
from controller.workflow.execution import ExecutionService
from controller.workflow.options import ExecutionOptions, posture_from
from controller.workflow.roles.base import Posture, recorded_posture
from controller.workflow.roles.planner import actions_for
from controller.workflow.roles.policy_gate import PolicyGate, decide, idempotency_key

KUBECTL = CommandSettings(
    name="rollout-restart",
    argv=["/usr/bin/kubectl", "rollout", "restart", "deployment/{workload}", "-n", "{namespace}"],
    for_families=["memory_pressure"],
    scope="cluster",
)
POD = {
    "kind": "pod",
    "id": "0b1c2d3e-aaaa-bbbb-cccc-000000000042",
    "namespace": "shop",
    "pod": "api-7d9f-x2x",
    "workload": "shop/Deployment/api",
}


def commands_in(acts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in acts if a["action"] == "run_command"]


def hyp(family: str, culprit: dict[str, Any]) -> dict[str, Any]:
    return {"family": family, "culprit": culprit, "rank": 1}


def script(tmp_path: Path, body: str, name: str = "cmd.sh") -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def step(params: dict[str, Any]) -> dict[str, Any]:
    action = {"action": "run_command", "parameters": params}
    return {
        "step": 0,
        "action": "run_command",
        "target": f"command:{params['command']}",
        "idempotency_key": idempotency_key("fp", action),
    }


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["kubectl", "get"], "absolute path"),
        (["/usr/bin/{comm}"], "absolute path"),
        (["/bin/kill", "{signal}"], "unknown placeholder {signal}"),
        (["/bin/echo", "a{pod"], "unbalanced brace"),
        (["/bin/echo", "a\nb"], "newline"),
    ],
)
def test_a_command_that_could_run_something_else_is_refused_at_load(argv: list[str], why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        CommandSettings(name="x", argv=argv)


def test_the_listed_commands_are_checked_together() -> None:
    one = {"name": "a", "argv": ["/bin/true"]}
    with pytest.raises(ValidationError, match="each name once"):
        ExecutionSettings.model_validate({"commands": [one, one]})
    with pytest.raises(ValidationError, match="must be under action_timeout_s"):
        ExecutionSettings.model_validate({"commands": [one | {"timeout_s": 10}]})  # the executor's own
    with pytest.raises(ValidationError, match="bad environment variable name"):
        CommandSettings.model_validate(one | {"env": {"A=B": "x"}})
    assert ExecutionSettings().commands == []  # the default runs nothing


# -- matching ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "-n",
        "--kubeconfig=/x",
        "..",
        "../etc",
        "a/../b",
        ".hidden",
        "a b",
        "a;b",
        "$(id)",
        "`id`",
        "",
        True,
        1.5,
    ],
)
def test_a_value_that_could_be_read_as_something_else_is_not_a_value(value: object) -> None:
    assert safe_value(value) is None
    assert render(["/bin/echo", "{pod}"], {"pod": value}) is None


def test_render_and_match_agree_and_nothing_else_matches() -> None:
    argv = render(KUBECTL.argv, {"workload": "api", "namespace": "shop"})
    assert argv == ["/usr/bin/kubectl", "rollout", "restart", "deployment/api", "-n", "shop"]
    assert matches(argv, KUBECTL.argv)
    assert render(KUBECTL.argv, {"workload": "api"}) is None  # no namespace: not proposed
    for bad in (
        [*argv, "--all"],  # longer
        argv[:-1],  # shorter
        [*argv[:-1], "kube-system --all"],
        [*argv[:3], "daemonset/api", *argv[4:]],  # the literal part differs
        ["/usr/local/bin/kubectl", *argv[1:]],  # another executable
        [*argv[:3], "deployment/-rf", *argv[4:]],
    ):
        assert not matches(bad, KUBECTL.argv), bad


# -- the actuator ------------------------------------------------------------------------


def test_the_actuator_runs_only_what_is_listed() -> None:
    env = HostEnv(commands=(KUBECTL,))
    act = get("run_command", env)
    good = {"command": "rollout-restart", "argv": render(KUBECTL.argv, {"workload": "a", "namespace": "b"})}
    assert "kubectl rollout restart deployment/a -n b" in act.describe(act.validate(good))
    with pytest.raises(ActuatorError, match=r"not in execution\.commands"):
        act.validate(good | {"command": "other"})
    with pytest.raises(ActuatorError, match="does not match"):
        act.validate(good | {"argv": ["/bin/sh", "-c", "reboot"]})
    with pytest.raises(ActuatorError, match=r"not in execution\.commands"):
        get("run_command", HostEnv()).validate(good)  # nothing listed: nothing runs
    with pytest.raises(ActuatorError, match="bad parameters"):
        act.validate(good | {"shell": True})


def test_a_command_runs_with_its_own_environment_and_no_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INCIDENTLAB_CONTROLLER_SECRET", "hunter2")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    exe = script(tmp_path, 'env | sort; read line && echo "stdin: $line"; echo "arg: $1"\n')
    rule = CommandSettings(
        name="show", argv=[exe, "{pod}"], env={"KUBECONFIG": "/etc/k"}, pass_env=["KUBERNETES_SERVICE_HOST"]
    )
    act = get("run_command", HostEnv(commands=(rule,)))
    p = act.validate({"command": "show", "argv": [exe, "api-1"]})
    done = act.apply(p, act.probe(p))
    out = done.after["output_tail"]
    assert done.after["exit_status"] == 0 and done.rollback is None
    assert "KUBECONFIG=/etc/k" in out and "KUBERNETES_SERVICE_HOST=10.0.0.1" in out
    assert "hunter2" not in out and "stdin:" not in out and "arg: api-1" in out
    assert "PATH=/usr/local/sbin:" in out


def test_output_is_bounded_and_a_failure_says_why(tmp_path: Path) -> None:
    loud = script(tmp_path, "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo last-line\n", "loud.sh")
    fails = script(tmp_path, "echo 'error: deployments.apps \"api\" not found' >&2; exit 3\n", "fails.sh")
    rules = (CommandSettings(name="loud", argv=[loud]), CommandSettings(name="fails", argv=[fails]))
    act = get("run_command", HostEnv(commands=rules))
    p = act.validate({"command": "loud", "argv": [loud]})
    after = act.apply(p, {}).after
    assert after["output_bytes"] > 3_000_000 and len(after["output_tail"]) <= OUTPUT_TAIL_BYTES
    assert after["output_tail"].endswith("last-line\n")
    p = act.validate({"command": "fails", "argv": [fails]})
    with pytest.raises(
        ActuatorError, match=r"exited with status 3: error: deployments.apps \"api\" not found"
    ):
        act.apply(p, {})


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    slow = script(tmp_path, f"sleep 300 & echo $! > {pidfile}; wait\n")
    act = get("run_command", HostEnv(commands=(CommandSettings(name="slow", argv=[slow], timeout_s=0.5),)))
    p = act.validate({"command": "slow", "argv": [slow]})
    t0 = time.monotonic()
    with pytest.raises(ActuatorError, match=r"timed out after 0\.5 s and was killed"):
        act.apply(p, {})
    assert time.monotonic() - t0 < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed; reaped by init
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_a_missing_executable_fails_the_probe_before_anything_runs(tmp_path: Path) -> None:
    rule = CommandSettings(name="gone", argv=[str(tmp_path / "nope")])
    act = get("run_command", HostEnv(commands=(rule,)))
    with pytest.raises(ActuatorError, match="not an executable file here"):
        act.probe(act.validate({"command": "gone", "argv": [str(tmp_path / "nope")]}))


# -- planner, gate, posture --------------------------------------------------------------


def test_the_planner_proposes_listed_commands_for_their_families() -> None:
    (cmd,) = commands_in(actions_for(hyp("memory_pressure", POD), "h", {"node": "n"}, (KUBECTL,)))
    assert cmd["parameters"] == {
        "command": "rollout-restart",
        "argv": ["/usr/bin/kubectl", "rollout", "restart", "deployment/api", "-n", "shop"],
    }
    assert cmd["safety_class"] == "impacting" and cmd["rollback"] is None
    assert not commands_in(actions_for(hyp("cpu_saturation", POD), "h", {}, (KUBECTL,)))  # not listed
    bare = {"kind": "process", "id": "1234", "pid": 1234, "comm": "java"}
    assert not commands_in(actions_for(hyp("memory_pressure", bare), "h", {}, (KUBECTL,)))
    hostile = POD | {"namespace": "--all-namespaces"}
    assert not commands_in(actions_for(hyp("memory_pressure", hostile), "h", {}, (KUBECTL,)))


def test_the_gate_runs_a_listed_command_under_the_posture_and_nothing_else() -> None:
    (act,) = commands_in(actions_for(hyp("memory_pressure", POD), "h", {}, (KUBECTL,)))
    assert decide(act, Posture(commands=(KUBECTL,)), "far-host") == (
        "blocked",
        "impacting actions are off (posture.allow_impacting)",
    )
    on = Posture(allow_impacting=True, commands=(KUBECTL,))
    assert decide(act, on, "far-host") == ("approval_required", None)  # cluster scope: from anywhere
    decision, why = decide(act, Posture(allow_impacting=True), "far-host")
    assert decision == "blocked" and "not in execution.commands" in str(why)  # unlisted since
    local = KUBECTL.model_copy(update={"scope": "host"})
    assert decide(act, Posture(allow_impacting=True, commands=(local,)), "far-host")[0] == "blocked"
    assert decide(act, Posture(allow_impacting=True, commands=(local,), local_hosts=("h",)), "h")[0] == (
        "approval_required"
    )
    forged = act | {"parameters": {"command": "rollout-restart", "argv": ["/bin/sh", "-c", "reboot"]}}
    assert decide(forged, on, "h")[0] == "blocked"


def test_the_plan_records_the_listed_commands_and_a_replay_decides_under_them() -> None:
    posture = posture_from(ExecutionSettings(allow_impacting=True, commands=[KUBECTL]), [])
    public = posture.public()
    assert public["commands"][0]["argv"] == KUBECTL.argv
    assert "commands" not in Posture().public()  # older plans hash as they did
    assert recorded_posture({"posture": public}, "h").commands == (KUBECTL,)
    # A recorded command that no longer reads as one is left out: its steps are blocked.
    mangled = public | {"commands": [{"name": "x", "argv": ["relative"]}]}
    assert recorded_posture({"posture": mangled}, "h").commands == ()


# -- through the executor ----------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = make_engine(f"sqlite:///{tmp_path / 'runs.db'}")
    migrate(e)
    return e


def test_the_executor_runs_it_once_and_never_reruns_a_lost_result(tmp_path: Path, engine: Engine) -> None:
    counter = tmp_path / "count"
    exe = script(tmp_path, f'echo x >> {counter}; echo "restarted $1"\n')
    rule = CommandSettings(name="restart", argv=[exe, "{workload}"])
    service = ExecutionService(
        RunStore(engine), HostEnv(commands=(rule,)), ExecutionOptions(), clock=time.time
    )
    try:
        params = {"command": "restart", "argv": [exe, "api"]}
        out = service.apply("run-1", "hash", step(params), params)
        assert out["outcome"] == "applied" and out["after"]["output_tail"] == "restarted api\n"
        assert out["rollback"] is None
        again = service.apply("run-2", "hash", step(params), params)
        assert again["reused_from"] == "run-1"  # the same key within its TTL: not run again
        assert counter.read_text() == "x\n"
        # An intent whose result never came (a crash mid-command) is settled, never rerun.
        lost = {"command": "restart", "argv": [exe, "web"]}
        with RunStore(engine).begin() as tx:
            tx.claim_intent(
                {
                    "idempotency_key": step(lost)["idempotency_key"],
                    "run_id": "run-3",
                    "step": 0,
                    "action": "run_command",
                    "params": lost,
                    "before": {"command": "restart", "executable": exe},
                    "intent_at": time.time(),
                },
                replacing=None,
            )
        settled = service.apply("run-3", "hash", step(lost), lost)
        assert settled["outcome"] == "settled_unknown" and counter.read_text() == "x\n"
        # Taken off the list since the plan: refused at execution, nothing run.
        gone = ExecutionService(RunStore(engine), HostEnv(), ExecutionOptions(), clock=time.time)
        other = {"command": "restart", "argv": [exe, "db"]}
        refused = gone.apply("run-4", "hash", step(other), other)
        assert refused["outcome"] == "failed" and "not in execution.commands" in refused["error"]
        gone.close()
    finally:
        service.close()
    assert os.path.exists(counter)


class _Proposal:
    def __init__(self, actions: list[dict[str, Any]]) -> None:
        self.payload = {"actions": actions}


class _Ctx:
    """What the policy gate reads of a stage context: the run, the posture, the proposal."""

    def __init__(self, posture: Posture, actions: list[dict[str, Any]]) -> None:
        self.run = {"fingerprint": "fp", "host_id": "h"}
        self.posture = posture
        self._proposal = _Proposal(actions)

    def previous(self, kind: str) -> _Proposal:
        assert kind == "remediation_proposal"
        return self._proposal


def test_a_plan_records_only_the_commands_its_steps_name() -> None:
    other = CommandSettings(name="unused", argv=["/bin/true"], for_families=["disk_full"])
    posture = Posture(allow_impacting=True, commands=(KUBECTL, other))
    acts = actions_for(hyp("memory_pressure", POD), "h", {}, posture.commands)
    plan = PolicyGate().compute(_Ctx(posture, acts))  # type: ignore[arg-type]
    assert [c["name"] for c in plan.payload["posture"]["commands"]] == ["rollout-restart"]
    (step,) = [s for s in plan.payload["steps"] if s["action"] == "run_command"]
    assert step["decision"] == "approval_required"
    # Replayed under what the plan recorded, the step is decided the same way.
    again = recorded_posture(plan.payload, "h")
    assert decide(commands_in(acts)[0], again, "h") == ("approval_required", None)
    plain = PolicyGate().compute(_Ctx(posture, [a for a in acts if a["action"] != "run_command"]))  # type: ignore[arg-type]
    assert "commands" not in plain.payload["posture"]  # hashes as a plan without commands did


def test_the_readme_example_loads() -> None:
    import yaml

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("**Runbook commands.**", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    x = ExecutionSettings.model_validate(yaml.safe_load(block)["workflow"]["execution"])
    (act,) = commands_in(actions_for(hyp("memory_pressure", POD), "h", {}, tuple(x.commands)))
    assert decide(act, posture_from(x, []), "far-host") == ("approval_required", None)
