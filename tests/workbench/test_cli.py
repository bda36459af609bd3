"""incidentlab, the operator's command line, against a real controller app: runs, show, approve a
chosen step, reject, replay, the postmortem, incidents, check-config; --version on every CLI;
no traceback on a closed pipe."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.controller.conftest import OPERATOR_TOKEN, ROOT, base_config, served_api
from tests.controller.test_fleet_api import labelled_incident
from tests.controller.test_postmortems import FakeRenderer
from workbench.cli import main


def cli(url: str, token: Path, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["--url", url, "--token-file", str(token), *argv], out=out)
    return code, out.getvalue()


def test_an_operator_works_a_run_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text(OPERATOR_TOKEN + "\n")
    execution = {"allow_safe_reversible": True, "local_hosts": ["node-p"]}
    with served_api(tmp_path, execution=execution) as (client, rt):
        rt.execution.clock = rt.workflow.clock
        url = str(client.base_url)
        waiting = labelled_incident(rt, "cpu_saturation", "node-p", {})
        other = labelled_incident(rt, "io_pressure", "node-p2", {})
        assert waiting and other
        code, out = cli(url, token, "runs")
        assert code == 0 and out.splitlines()[0].split() == [
            "RUN",
            "OPENED",
            "(UTC)",
            "HOST",
            "FAMILY",
            "CULPRIT",
            "STATUS",
            "STATE",
            "PAGES",
        ]
        assert waiting in out and "awaiting_approval" in out and other in out
        code, out = cli(url, token, "runs", "--status", "awaiting_approval", "--json")
        assert code == 0 and [r["run_id"] for r in json.loads(out)] == [waiting]
        code, out = cli(url, token, "show", waiting)
        assert (
            code == 0 and "cpu_saturation" in out and "execution_plan" in out and "approval_required" in out
        )
        plan_steps = [line.split()[0] for line in out.splitlines() if "approval_required" in line]
        step = plan_steps[0]
        code, out = cli(url, token, "approve", waiting, "--steps", step, "--reason", "cap it")
        assert code == 0 and f"approved {waiting}" in out and f"steps [{step}]" in out
        code, _ = cli(url, token, "approve", waiting)
        assert code == 1 and "not awaiting approval" in capsys.readouterr().err
        code, out = cli(url, token, "replay", other)
        assert code == 0 and "replayed" in out and "8 stages" in out
        code, _ = cli(url, token, "report", other)
        assert code == 1 and "no postmortem" in capsys.readouterr().err
        rt.postmortems.render = FakeRenderer()
        rt.postmortems.make(other, "resolved")
        code, out = cli(url, token, "report", other, "--out", str(tmp_path / "pm.html"))
        assert code == 0 and f"Postmortem of {other}" in (tmp_path / "pm.html").read_text()
        code, out = cli(url, token, "incidents")
        assert code == 0 and out.split() == [
            "INCIDENT",
            "OPENED",
            "(UTC)",
            "FAMILY",
            "SERVICE",
            "OR",
            "GROUP",
            "HOSTS",
            "LIVE",
            "STATE",
        ]
        code, _ = cli(url, token, "approve", waiting, "--steps", "one")
        assert code == 1 and "--steps takes step numbers" in capsys.readouterr().err
        code, _ = cli(url, tmp_path / "no-such-token", "runs")
        assert code == 1 and "cannot read the token file" in capsys.readouterr().err
        bad = tmp_path / "bad-token"
        bad.write_text("wrong-token-0123456789")
        code, _ = cli(url, bad, "runs")
        assert code == 1 and "401" in capsys.readouterr().err


def test_check_config_says_what_a_service_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "controller.yaml"
    good.write_text(json.dumps(base_config(tmp_path, workflow={"fleet": {"min_hosts": 4}})))
    out = io.StringIO()
    assert main(["check-config", "--controller", str(good)], out=out) == 0 and out.getvalue().endswith(
        ": ok\n"
    )
    tokenless = tmp_path / "tokenless.yaml"
    tokenless.write_text("port: 9443\n")
    assert main(["check-config", "--controller", str(tokenless)], out=io.StringIO()) == 1
    assert "no tokens are configured" in capsys.readouterr().err
    bad = tmp_path / "collector.yaml"
    bad.write_text("interval_s: 0\nlabels: {Zone: a}\n")
    assert main(["check-config", "--collector", str(bad)], out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "interval_s" in err and "labels" in err
    assert main(["check-config"], out=io.StringIO()) == 1
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - family: no_such_family\n")
    with_rules = tmp_path / "with-rules.yaml"
    with_rules.write_text(json.dumps(base_config(tmp_path, workflow={"rules_file": str(rules)})))
    assert main(["check-config", "--controller", str(with_rules)], out=io.StringIO()) == 1
    assert "no_such_family" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["workbench.cli", "controller.cli", "collector.cli", "pipelines.cli"])
def test_every_cli_says_its_version(module: str) -> None:
    from controller import __version__

    done = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0 and __version__ in done.stdout, (done.stdout, done.stderr)


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    good = tmp_path / "controller.yaml"
    good.write_text(json.dumps(base_config(tmp_path)))
    # The reader goes away before the answer is written: quiet, as `incidentlab ... | head` is.
    script = (
        "import sys, time; time.sleep(0.5); from workbench.cli import main; "
        "sys.exit(main(['check-config', '--controller', sys.argv[1]]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(good)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.wait(30)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert "Traceback" not in err and proc.returncode in (0, 141), (proc.returncode, err)


def test_the_controller_says_where_it_listens_and_logs_requests_when_asked(tmp_path: Path) -> None:
    import httpx

    from tests.controller.conftest import ControllerProc

    ctl = ControllerProc(tmp_path, base_config(tmp_path / "data"))
    ctl.args = ("--access-log", "--log-level", "info")
    ctl.start()
    try:
        httpx.get(ctl.url + "/healthz", timeout=5)
        deadline = time.monotonic() + 10
        while "GET /healthz" not in ctl.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = ctl.log.read_text()
    finally:
        ctl.stop()
    assert f"listening on http://127.0.0.1:{ctl.port}" in log
    assert '"GET /healthz HTTP/1.1" 200' in log


def test_the_example_configs_are_ones_the_services_take(tmp_path: Path) -> None:
    """examples/*.yaml, with their files put in place: what a new user copies must start."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("node.token", "ops.token"):
        (etc / name).write_text(f"{name}-0123456789-abcdefghij\n")
    for name in ("controller.yaml", "collector.yaml"):
        text = (ROOT / "examples" / name).read_text().replace("/etc/incidentlab/", f"{etc}/")
        (tmp_path / name).write_text(text)
    out = io.StringIO()
    assert main(["check-config", "--controller", str(tmp_path / "controller.yaml")], out=out) == 0
    assert main(["check-config", "--collector", str(tmp_path / "collector.yaml")], out=out) == 0
    assert out.getvalue().count(": ok\n") == 2


def test_a_ca_file_that_cannot_be_used_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "ops.token"
    token.write_text(OPERATOR_TOKEN)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    for how in (["--ca-file", str(tmp_path / "missing.pem")], ["--ca-file", str(garbage)]):
        assert main([*how, "--url", "https://127.0.0.1:1", "--token-file", str(token), "runs"]) == 1
        err = capsys.readouterr().err
        assert "cannot use the CA file" in err and "Traceback" not in err, err
    monkeypatch.setenv("INCIDENTLAB_CA_FILE", str(tmp_path / "missing.pem"))
    assert main(["--url", "https://127.0.0.1:1", "--token-file", str(token), "runs"]) == 1
    assert f"cannot use the CA file {tmp_path / 'missing.pem'}" in capsys.readouterr().err
