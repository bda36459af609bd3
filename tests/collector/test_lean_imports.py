"""What keeps the agent small (README, "The collector never loads LLVM" and "Measured"): it
never imports bcc, pyroute2's whole package, httpx's command-line client, or pynvml on a
node without the NVIDIA driver, and each of those still works when something asks for it.
Run in fresh interpreters: what is imported is the point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, check=True
    )
    got: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return got


def test_the_network_source_loads_iproute_alone_and_the_package_still_answers() -> None:
    got = run(
        "import json, sys\n"
        "from collector.sources.network import iproute_class\n"
        "ipr = iproute_class()()\n"
        "names = [l.get_attr('IFLA_IFNAME') for l in ipr.get_links()]\n"
        "ipr.close()\n"
        "lean = sorted({m.split('.')[1] for m in sys.modules if m.startswith('pyroute2.')})\n"
        "from pyroute2 import NDB, NetlinkError\n"  # a name of the package's own __init__
        "print(json.dumps({'names': names, 'lean': lean, 'ndb': NDB.__name__}))\n"
    )
    assert "lo" in got["names"]  # type: ignore[operator]
    assert "ndb" not in got["lean"] and "ipdb" not in got["lean"]  # type: ignore[operator]
    assert got["ndb"] == "NDB"


def test_the_agent_command_leaves_httpx_cli_out() -> None:
    got = run(
        "import json, sys\n"
        "sys.modules.setdefault('httpx._main', None)\n"  # what cmd_run does first
        "import collector.agent, httpx\n"
        "c = httpx.Client(); c.close()\n"
        "print(json.dumps({'rich': 'rich' in sys.modules, 'click': 'click' in sys.modules}))\n"
    )
    assert got == {"rich": False, "click": False}
    source = (ROOT / "collector" / "cli.py").read_text()
    run_body = source.split("def cmd_run", 1)[1].split("from collector.agent import Agent", 1)[0]
    assert 'sys.modules.setdefault("httpx._main", None)' in run_body


def test_without_the_driver_pynvml_is_not_even_imported() -> None:
    got = run(
        "import json, sys\n"
        "from collector.info import nvml_presence\n"
        "present, why = nvml_presence()\n"
        "print(json.dumps({'present': present, 'why': why, 'pynvml': 'pynvml' in sys.modules}))\n"
    )
    if got["present"]:
        pytest.skip("this machine has the NVIDIA driver")
    assert got["pynvml"] is False
    assert "libnvidia-ml.so.1 is not here" in str(got["why"])
