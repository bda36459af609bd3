"""native/probe_core.pyi against the built module: names, signatures, returned keys."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import probe_core
import pytest

STUB = Path(__file__).resolve().parents[2] / "native" / "probe_core.pyi"
TREE = ast.parse(STUB.read_text())


def _stub_classes() -> dict[str, ast.ClassDef]:
    return {n.name: n for n in TREE.body if isinstance(n, ast.ClassDef)}


def _is_typeddict(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> bool:
    for base in cls.bases:
        name = base.id if isinstance(base, ast.Name) else None
        if name == "TypedDict" or (name in classes and _is_typeddict(classes[name], classes)):
            return True
    return False


def _typeddict_keys(name: str) -> set[str]:
    classes = _stub_classes()
    cls = classes[name]
    keys = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in classes:
            keys |= _typeddict_keys(base.id)
    return keys


def _optional_keys(name: str) -> set[str]:
    cls = _stub_classes()[name]
    return {
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign)
        and isinstance(n.target, ast.Name)
        and "NotRequired" in ast.unparse(n.annotation)
    }


def _runtime_names() -> set[str]:
    return {n for n in dir(probe_core) if not n.startswith("_")} | {"__version__"}


def _stub_runtime_names() -> set[str]:
    classes = _stub_classes()
    names: set[str] = set()
    for node in TREE.body:
        typed_dict = isinstance(node, ast.ClassDef) and _is_typeddict(node, classes)
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not typed_dict:
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_stub_and_module_have_the_same_public_names() -> None:
    assert {
        n for n in _stub_runtime_names() if not n.startswith("_") or n == "__version__"
    } == _runtime_names()


def _stub_params(fn: ast.FunctionDef) -> list[tuple[str, str | None]]:
    args = [a.arg for a in fn.args.args]
    defaults: list[str | None] = [None] * (len(args) - len(fn.args.defaults))
    defaults += [ast.literal_eval(d).__repr__() for d in fn.args.defaults]
    return [(a, d) for a, d in zip(args, defaults, strict=True) if a != "self"]


def _runtime_params(obj: Any) -> list[tuple[str, str | None]]:
    # nanobind exposes each overload's signature as text: "def name(a: T, b: T = default) -> R".
    # Defaults appear as placeholders \\0, \\1 ... indexing the third element.
    sig, _doc, values = obj.__nb_signature__[0]
    sig = re.sub(r"\\(\d+)", lambda m: repr(values[int(m.group(1))]), sig)
    node = ast.parse(sig + ": ...").body[0]
    assert isinstance(node, ast.FunctionDef)
    args = node.args.args
    defaults: list[str | None] = [None] * (len(args) - len(node.args.defaults))
    defaults += [repr(ast.literal_eval(d)) for d in node.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults, strict=True) if a.arg != "self"]


def _functions() -> list[ast.FunctionDef]:
    return [n for n in TREE.body if isinstance(n, ast.FunctionDef)]


@pytest.mark.parametrize("fn", _functions(), ids=lambda f: f.name)
def test_function_signatures_match(fn: ast.FunctionDef) -> None:
    assert _stub_params(fn) == _runtime_params(getattr(probe_core, fn.name))


@pytest.mark.parametrize("cls", ["ProcessScanner", "PerfCounters", "Taskstats"])
def test_class_methods_match(cls: str) -> None:
    node = _stub_classes()[cls]
    stub_methods = {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}
    runtime = getattr(probe_core, cls)
    public = {n for n in dir(runtime) if not n.startswith("_")} | {"__init__"}
    assert set(stub_methods) == public
    for name, fn in stub_methods.items():
        if name in ("root", "cold_ttl_s", "open_fds", "family_id"):
            assert isinstance(inspect.getattr_static(runtime, name), property)
            continue
        assert _stub_params(fn) == _runtime_params(getattr(runtime, name)), name


def _returned(name: str) -> str:
    fn = next(f for f in _functions() if f.name == name)
    assert fn.returns is not None
    return ast.unparse(fn.returns)


def _check_keys(value: dict[str, Any], typeddict: str) -> None:
    expected = _typeddict_keys(typeddict)
    optional = _optional_keys(typeddict)
    assert expected - optional <= set(value) <= expected, typeddict


def test_returned_keys_match_typeddicts(modern_root: str) -> None:
    checks: list[tuple[str, dict[str, Any]]] = [
        ("sysinfo_host", dict(probe_core.sysinfo_host(modern_root))),
        ("read_cpu", dict(probe_core.read_cpu(modern_root))),
        ("read_pressure", dict(probe_core.read_pressure(modern_root))),
        ("read_diskstats", dict(probe_core.read_diskstats(modern_root))),
        (
            "parse_pid_stat",
            dict(probe_core.parse_pid_stat("1 (x) S 0 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0")),
        ),
        ("parse_pid_cgroup", dict(probe_core.parse_pid_cgroup("0::/\n"))),
    ]
    for fn, value in checks:
        _check_keys(value, _returned(fn))
    cpu = probe_core.read_cpu(modern_root)
    _check_keys(dict(cpu["total"]), "CpuTimes")
    _check_keys(dict(cpu["per_cpu"][0]), "PerCpuTimes")
    _check_keys(dict(probe_core.read_diskstats(modern_root)["devices"][0]), "DiskStat")
    _check_keys(dict(probe_core.read_net_dev(modern_root)[0]), "NetDev")
    psi = probe_core.read_pressure(modern_root)["cpu"]
    assert psi is not None
    _check_keys(dict(psi), "PsiFile")
    assert psi["some"] is not None
    _check_keys(dict(psi["some"]), "PsiLine")
    scan = probe_core.ProcessScanner(modern_root).scan()
    _check_keys(dict(scan), "ScanResult")
    _check_keys(dict(scan["totals"]), "ProcTotals")
    _check_keys(dict(scan["rows"][0]), "ProcRow")
    _check_keys(dict(probe_core.ProcessScanner().fd_holders(1)[0]), "FdHolder")


@pytest.mark.root
def test_perf_keys_match_typeddicts() -> None:
    reading = probe_core.PerfCounters().read()
    _check_keys(dict(reading), "PerfReading")
    _check_keys(dict(reading["total"]), "PerfTotals")
    _check_keys(dict(reading["per_cpu"][0]), "PerfCpuCounts")


def test_error_tree_matches() -> None:
    assert issubclass(probe_core.ReadError, probe_core.ProbeError) and issubclass(
        probe_core.ReadError, OSError
    )
    assert issubclass(probe_core.OutputLimitError, probe_core.DecompressError)
    for name in ("ParseError", "DecodeError", "EncodeError", "DecompressError"):
        cls = getattr(probe_core, name)
        assert issubclass(cls, probe_core.ProbeError) and issubclass(cls, ValueError)
    assert issubclass(probe_core.UnavailableError, probe_core.ProbeError)


def test_socket_and_capability_keys_match_typeddicts() -> None:
    from tests.native.test_netlink import PROC_NET_TCP

    summary = probe_core.parse_proc_net_tcp(PROC_NET_TCP)
    _check_keys(dict(summary), "TcpSummary")
    _check_keys(dict(summary["listeners_near_backlog"][0]), "TcpSocket")
    _check_keys(dict(probe_core.capget()), "CapSets")


@pytest.mark.root
def test_taskstats_keys_match_typeddict() -> None:
    delays = probe_core.Taskstats().tgid(1)
    assert delays is not None
    _check_keys(dict(delays), "TaskDelays")
