"""run_command: the runbook commands listed in execution.commands and nothing else. Tried as a
hostile proposal would: values that read as flags, path climbs or a second command, an argv
longer or shorter than the listed one, a command not listed, one that prints without end,
one that outlives its timeout with children, and the controller's own environment."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from controller.actuators import ActuatorError, HostEnv, get
from controller.actuators.command import OUTPUT_TAIL_BYTES, CommandFailed, matches, render, safe_value
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


def cmd(name: str, argv: list[str], **kw: Any) -> CommandSettings:
    return CommandSettings(name=name, argv=argv, **({"for_families": ["memory_pressure"]} | kw))


def params(rule: CommandSettings, argv: list[str]) -> dict[str, Any]:
    return {"command": rule.name, "argv": argv, "rule": rule.digest()}


def commands_in(acts: list[dict[str, Any]], family: str = "memory_pressure") -> list[dict[str, Any]]:
    """The run_command proposals, with the family the planner proposes them for."""
    return [{"for_family": family, **a} for a in acts if a["action"] == "run_command"]


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
        cmd("x", argv)


def test_the_listed_commands_are_checked_together() -> None:
    one = {"name": "a", "argv": ["/bin/true"], "for_families": ["memory_pressure"]}
    with pytest.raises(ValidationError, match="each name once"):
        ExecutionSettings.model_validate({"commands": [one, one]})
    with pytest.raises(ValidationError, match="must be under action_timeout_s"):
        ExecutionSettings.model_validate({"commands": [one | {"timeout_s": 10}]})  # the executor's own
    with pytest.raises(ValidationError, match="bad environment variable name"):
        CommandSettings.model_validate(one | {"env": {"A=B": "x"}})
    with pytest.raises(ValidationError, match="for_families"):
        CommandSettings.model_validate(one | {"for_families": []})  # listed for nothing: never proposed
    with pytest.raises(ValidationError, match="not a family name"):
        CommandSettings.model_validate(one | {"for_families": ["Memory Pressure"]})
    assert ExecutionSettings().commands == []  # the default runs nothing


# -- matching ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("pod", "-n"),
        ("pod", "--kubeconfig=/x"),
        ("pod", ".."),
        ("pod", "a..b"),
        ("pod", ".hidden"),
        ("pod", "a b"),
        ("pod", "a;b"),
        ("pod", "$(id)"),
        ("pod", "`id`"),
        ("pod", ""),
        ("pod", "a=b"),  # an assignment to kubectl label/annotate/set env
        ("pod", "@file"),  # a response file to argparse, curl, gcc
        ("pod", "/etc/passwd"),  # only a cgroup is a path
        ("pod", "API"),  # not a DNS name
        ("namespace", "kube.system"),
        ("comm", "+x"),
        ("comm", "a name"),
        ("comm", "far-too-long-for-a-comm"),
        ("pid", "0"),
        ("pid", "12a"),
        ("cgroup", "/a/../b"),
        ("cgroup", "relative"),
        ("workload_kind", "deployment"),
        ("nosuch", "x"),
        ("pod", True),
        ("pod", 1.5),
    ],
)
def test_a_value_not_of_its_placeholders_shape_is_not_a_value(name: str, value: object) -> None:
    assert safe_value(name, value) is None
    assert render(["/bin/echo", "{" + name + "}"], {name: value}) is None


def test_real_values_are_values() -> None:
    good = {
        "pod": "api-7d9f-x2x",
        "namespace": "kube-system",
        "node": "ip-10-0-1-7.ec2.internal",
        "comm": "python3.11",
        "pid": 4242,
        "cgroup": "/kubepods.slice/kubepods-pod12.slice/cri-containerd-ab12.scope",
        "workload_kind": "StatefulSet",
        "host_id": "3d1219c7c4c5",
        "family": "memory_pressure",
    }
    for name, value in good.items():
        assert safe_value(name, value) == str(value), name


def test_a_placeholder_cannot_make_a_path_climb_across_its_edge() -> None:
    # '{pod}.log' with a pod named 'a.' would render 'a..log': refused by both, not by one.
    assert render(["/bin/cat", "/var/log/{pod}.log"], {"pod": "a."}) is None
    assert not matches(["/bin/cat", "/var/log/a..log"], ["/bin/cat", "/var/log/{pod}.log"])
    assert render(["/bin/cat", "/var/log/{pod}.log"], {"pod": "a"}) == ["/bin/cat", "/var/log/a.log"]


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
    good = params(KUBECTL, render(KUBECTL.argv, {"workload": "a", "namespace": "b"}) or [])
    assert "kubectl rollout restart deployment/a -n b" in act.describe(act.validate(good))
    with pytest.raises(ActuatorError, match=r"not in execution\.commands"):
        act.validate(good | {"command": "other"})
    with pytest.raises(ActuatorError, match="does not match"):
        act.validate(good | {"argv": ["/bin/sh", "-c", "reboot"]})
    with pytest.raises(ActuatorError, match=r"not in execution\.commands"):
        get("run_command", HostEnv()).validate(good)  # nothing listed: nothing runs
    with pytest.raises(ActuatorError, match="bad parameters"):
        act.validate(good | {"shell": True})
    # Listed again with another environment since it was planned: not the command approved.
    changed = HostEnv(commands=(KUBECTL.model_copy(update={"env": {"KUBECONFIG": "/etc/prod"}}),))
    with pytest.raises(ActuatorError, match="changed since it was planned"):
        get("run_command", changed).validate(good)


def test_a_command_runs_with_its_own_environment_and_no_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INCIDENTLAB_CONTROLLER_SECRET", "hunter2")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    exe = script(tmp_path, 'env | sort; read line && echo "stdin: $line"; echo "arg: $1"\n')
    rule = cmd("show", [exe, "{pod}"], env={"KUBECONFIG": "/etc/k"}, pass_env=["KUBERNETES_SERVICE_HOST"])
    act = get("run_command", HostEnv(commands=(rule,)))
    p = act.validate(params(rule, [exe, "api-1"]))
    done = act.apply(p, act.probe(p))
    out = done.after["output_tail"]
    assert done.after["exit_status"] == 0 and done.rollback is None
    assert "KUBECONFIG=/etc/k" in out and "KUBERNETES_SERVICE_HOST=10.0.0.1" in out
    assert "hunter2" not in out and "stdin:" not in out and "arg: api-1" in out
    assert "PATH=/usr/local/sbin:" in out


def test_output_is_bounded_and_a_failure_says_why(tmp_path: Path) -> None:
    loud = script(tmp_path, "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo last-line\n", "loud.sh")
    fails = script(tmp_path, "echo 'error: deployments.apps \"api\" not found' >&2; exit 3\n", "fails.sh")
    rules = (cmd("loud", [loud]), cmd("fails", [fails]))
    act = get("run_command", HostEnv(commands=rules))
    p = act.validate(params(rules[0], [loud]))
    after = act.apply(p, {}).after
    assert after["output_bytes"] > 3_000_000 and len(after["output_tail"]) <= OUTPUT_TAIL_BYTES
    assert after["output_tail"].endswith("last-line\n")
    p = act.validate(params(rules[1], [fails]))
    with pytest.raises(
        ActuatorError, match=r"exited with status 3: error: deployments.apps \"api\" not found"
    ):
        act.apply(p, {})
    try:
        act.apply(p, {})
    except CommandFailed as exc:
        assert exc.after["exit_status"] == 3 and "not found" in exc.after["output_tail"]


def test_a_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    slow = script(tmp_path, f"sleep 300 & echo $! > {pidfile}; echo draining the queue; wait\n")
    rule = cmd("slow", [slow], timeout_s=0.5)
    act = get("run_command", HostEnv(commands=(rule,)))
    p = act.validate(params(rule, [slow]))
    t0 = time.monotonic()
    with pytest.raises(CommandFailed, match=r"timed out after 0\.5 s and was killed") as caught:
        act.apply(p, {})
    assert time.monotonic() - t0 < 5
    assert caught.value.after["output_tail"] == "draining the queue\n"  # what it said before it was killed
    assert caught.value.after["exit_status"] is None
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed; reaped by init
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]


def test_what_a_command_leaves_behind_goes_with_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "left.pid"
    quick = script(tmp_path, f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; echo done\n", "quick.sh")
    rule = cmd("quick", [quick])
    act = get("run_command", HostEnv(commands=(rule,)))
    t0 = time.monotonic()
    after = act.apply(act.validate(params(rule, [quick])), {}).after
    assert after["exit_status"] == 0 and after["output_tail"] == "done\n" and time.monotonic() - t0 < 5
    left = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{left}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{left}").exists() or "Z" in Path(f"/proc/{left}/stat").read_text().split()[2]


def test_a_missing_executable_fails_the_probe_before_anything_runs(tmp_path: Path) -> None:
    rule = cmd("gone", [str(tmp_path / "nope")])
    act = get("run_command", HostEnv(commands=(rule,)))
    with pytest.raises(ActuatorError, match="not an executable file here"):
        act.probe(act.validate(params(rule, [str(tmp_path / "nope")])))


# -- planner, gate, posture --------------------------------------------------------------


def test_the_planner_proposes_listed_commands_for_their_families() -> None:
    (proposed,) = commands_in(actions_for(hyp("memory_pressure", POD), "h", {"node": "n"}, (KUBECTL,)))
    assert proposed["parameters"] == {
        "command": "rollout-restart",
        "argv": ["/usr/bin/kubectl", "rollout", "restart", "deployment/api", "-n", "shop"],
        "rule": KUBECTL.digest(),
    }
    assert proposed["safety_class"] == "impacting" and proposed["rollback"] is None
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
    assert "changed since it was planned" in str(
        decide(act, Posture(allow_impacting=True, commands=(local,)), "h")[1]
    )
    (on_host,) = commands_in(actions_for(hyp("memory_pressure", POD), "h", {}, (local,)))
    assert decide(on_host, Posture(allow_impacting=True, commands=(local,)), "far-host")[0] == "blocked"
    assert decide(on_host, Posture(allow_impacting=True, commands=(local,), local_hosts=("h",)), "h")[0] == (
        "approval_required"
    )
    forged = act | {"parameters": act["parameters"] | {"argv": ["/bin/sh", "-c", "reboot"]}}
    assert decide(forged, on, "h")[0] == "blocked"
    elsewhere = act | {"for_family": "disk_full"}  # listed for memory pressure alone
    assert decide(elsewhere, on, "h") == (
        "blocked",
        "run_command is listed for memory_pressure, not disk_full",
    )


def test_the_plan_records_the_listed_commands_and_a_replay_decides_under_them() -> None:
    posture = posture_from(ExecutionSettings(allow_impacting=True, commands=[KUBECTL]), [])
    public = posture.public()
    assert public["commands"][0]["argv"] == KUBECTL.argv
    assert "commands" not in Posture().public()  # older plans hash as they did
    again = recorded_posture({"posture": public}, "h").commands
    assert [c.digest() for c in again] == [KUBECTL.digest()]  # the approval binds to the same command
    # A recorded command that no longer reads as one is left out: its steps are blocked.
    mangled = public | {"commands": [{"name": "x", "argv": ["relative"], "for_families": ["a"]}]}
    assert recorded_posture({"posture": mangled}, "h").commands == ()


# -- through the executor ----------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = make_engine(f"sqlite:///{tmp_path / 'runs.db'}")
    migrate(e)
    return e


def test_the_executor_runs_it_once_and_never_reruns_a_lost_result(tmp_path: Path, engine: Engine) -> None:
    counter = tmp_path / "count"
    exe = script(tmp_path, f'echo x >> {counter}; echo "restarted $1"; [ "$1" != fails ]\n')
    rule = cmd("restart", [exe, "{workload}"])
    service = ExecutionService(
        RunStore(engine), HostEnv(commands=(rule,)), ExecutionOptions(), clock=time.time
    )
    try:
        ok = params(rule, [exe, "api"])
        out = service.apply("run-1", "hash", step(ok), ok)
        assert out["outcome"] == "applied" and out["after"]["output_tail"] == "restarted api\n"
        assert out["rollback"] is None
        again = service.apply("run-2", "hash", step(ok), ok)
        assert again["reused_from"] == "run-1"  # the same key within its TTL: not run again
        assert counter.read_text() == "x\n"
        # An intent whose result never came (a crash mid-command) is settled, never rerun.
        lost = params(rule, [exe, "web"])
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
        # A command that ran and failed keeps what it printed, and is never run again.
        bad = params(rule, [exe, "fails"])
        failed = service.apply("run-5", "hash", step(bad), bad)
        assert failed["outcome"] == "failed" and failed["may_have_changed"] and failed["changed_host"]
        assert failed["after"]["exit_status"] == 1 and failed["after"]["output_tail"] == "restarted fails\n"
        retried = service.apply("run-6", "hash", step(bad), bad)
        assert retried["reused_from"] == "run-5" and counter.read_text() == "x\nx\n"
        # Taken off the list since the plan: refused at execution, nothing run.
        gone = ExecutionService(RunStore(engine), HostEnv(), ExecutionOptions(), clock=time.time)
        other = params(rule, [exe, "db"])
        refused = gone.apply("run-4", "hash", step(other), other)
        assert refused["outcome"] == "failed" and "not in execution.commands" in refused["error"]
        assert not refused["changed_host"]
        gone.close()
    finally:
        service.close()
    assert os.path.exists(counter)


def test_a_plan_never_holds_an_env_value() -> None:
    secret = cmd("with-secret", ["/bin/true"], env={"API_TOKEN": "hunter2-very-secret"})
    public = posture_from(ExecutionSettings(allow_impacting=True, commands=[secret]), []).public()
    assert "hunter2" not in json.dumps(public)
    assert public["commands"][0]["env"]["API_TOKEN"].startswith("sha256:")
    # Read back from the plan it is the same command (same digest), whose value stays unknown.
    (back,) = recorded_posture({"posture": public}, "h").commands
    assert back.digest() == secret.digest() and back.env["API_TOKEN"] != "hunter2-very-secret"


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
    other = cmd("unused", ["/bin/true"], for_families=["disk_full"])
    posture = Posture(allow_impacting=True, commands=(KUBECTL, other))
    acts = [
        {"for_family": "memory_pressure", **a}
        for a in actions_for(hyp("memory_pressure", POD), "h", {}, posture.commands)
    ]
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
