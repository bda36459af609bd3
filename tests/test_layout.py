"""The repository layout DESIGN.md draws, and pins that must agree across files."""

from __future__ import annotations

import ast
import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["collector", "controller", "workbench", "pipelines"]


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_import_with_a_docstring_and_are_typed(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__ and len(module.__doc__.strip()) > 40
    assert (ROOT / name / "py.typed").exists()


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.partition(".")[0])
    return roots


@pytest.mark.parametrize("name", [*PACKAGES, "bench", "testkit", "notebooks"])
def test_only_tests_import_tests_and_shipped_packages_leave_testkit_alone(name: str) -> None:
    forbidden = {"tests", "testkit"} if name in PACKAGES else {"tests"}
    for path in sorted((ROOT / name).rglob("*.py")):
        assert not _imported_roots(path) & forbidden, path.relative_to(ROOT)


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for req in requirements:
        name, _, version = req.partition("==")
        assert version, f"{req} is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def test_environment_yml_pins_match_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    expected = _pins(pyproject["build-system"]["requires"])
    for extra in pyproject["project"]["optional-dependencies"].values():
        expected |= _pins(extra)
    expected |= _pins(pyproject["project"]["dependencies"])
    lines = (ROOT / "environment.yml").read_text().splitlines()
    in_pip = False
    env_reqs = []
    for line in lines:
        if line.strip() == "- pip:":
            in_pip = True
            continue
        if in_pip and line.strip().startswith("- "):
            env_reqs.append(line.strip()[2:])
    assert _pins(env_reqs) == expected


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert "make test" in readme and "make demo" in readme


def test_readme_quotes_the_recorded_benchmark_results() -> None:
    from bench import report

    assert report.current() == report.render(), "run `python -m bench.report` (make bench does)"


# The dependency arrow: probe_core <- collector <- controller <- workbench <- pipelines.
# Each shipped package may import the ones to its left and nothing to its right.
ARROW = ["probe_core", "collector", "controller", "workbench", "pipelines"]
# The workbench reads runs through the store, the artifact contract and the read-only query
# API; the engine's moving parts and a controller process's state are not its to build.
WORKBENCH_MAY_NOT = (
    "controller.workflow.engine",
    "controller.workflow.triggers",
    "controller.workflow.runner",
    "controller.workflow.decisions",
    "controller.hotstate",
    "controller.runtime",
    "controller.api",
)


def _imported_modules(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return mods


def arrow_breaks(root: Path) -> list[str]:
    """Every import, in the shipped packages under ``root``, that points against the arrow."""
    out = []
    for i, name in enumerate(ARROW[1:], start=1):
        forbidden = set(ARROW[i + 1 :])
        for path in sorted((root / name).rglob("*.py")):
            mods = _imported_modules(path)
            rel = path.relative_to(root)
            out += [f"{rel} imports {m}" for m in sorted(mods) if m.partition(".")[0] in forbidden]
            if name == "workbench":
                out += [
                    f"{rel} imports {m}"
                    for m in sorted(mods)
                    if any(m == w or m.startswith(w + ".") for w in WORKBENCH_MAY_NOT)
                ]
    return out


def test_dependencies_follow_the_arrow() -> None:
    assert arrow_breaks(ROOT) == []


def test_the_arrow_check_catches_a_broken_arrow(tmp_path: Path) -> None:
    """The check above is only worth its name if it fails: break each arrow in a copy."""
    for name in ARROW[1:]:
        (tmp_path / name).mkdir()
    (tmp_path / "collector" / "a.py").write_text("from controller.config import ControllerSettings\n")
    (tmp_path / "controller" / "b.py").write_text("import workbench.frames\n")
    (tmp_path / "workbench" / "c.py").write_text("from controller.workflow.engine import WorkflowEngine\n")
    (tmp_path / "pipelines" / "d.py").write_text("from controller.store.runs import RunStore\n")
    assert arrow_breaks(tmp_path) == [
        "collector/a.py imports controller.config",
        "collector/a.py imports controller.config.ControllerSettings",
        "controller/b.py imports workbench.frames",
        "workbench/c.py imports controller.workflow.engine",
        "workbench/c.py imports controller.workflow.engine.WorkflowEngine",
    ]


# SQL lives in controller/store/ only: statements as text, and the SQLAlchemy builders.
SQL_TEXT = re.compile(
    r"\b(SELECT\s+(\*|\w+\s*(,|FROM))|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
    r"CREATE\s+(TABLE|INDEX|TRIGGER)|PRAGMA\s+\w+|ALTER\s+TABLE)"
)
SQL_BUILDERS = {"text", "select", "insert", "update", "delete", "literal_column"}
# bench/workbench_bench.py's peer is pandas.read_sql_query over the raw table: its query is
# the peer's, not ours, and the comparison needs it spelled out.
SQL_ALLOWED = {"bench/workbench_bench.py": 1}


def sql_outside_the_store(root: Path, dirs: list[str]) -> list[str]:
    out = []
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("controller/store/"):
                continue
            tree = ast.parse(path.read_text(), rel)
            found = []
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and SQL_TEXT.search(node.value)
                ):
                    found.append(f"{rel}:{node.lineno} SQL text {node.value[:40]!r}")
                elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                    builders = {a.name for a in node.names} & SQL_BUILDERS
                    if builders or "dialects" in (node.module or ""):
                        found.append(f"{rel}:{node.lineno} imports {node.module} {sorted(builders)}")
            out += found[SQL_ALLOWED.get(rel, 0) :]
    return out


def test_no_sql_outside_the_store() -> None:
    assert sql_outside_the_store(ROOT, [*ARROW[1:], "bench", "testkit"]) == []


def test_the_sql_check_catches_sql(tmp_path: Path) -> None:
    (tmp_path / "controller" / "store").mkdir(parents=True)
    (tmp_path / "controller" / "store" / "ok.py").write_text('Q = "SELECT * FROM t"\n')
    (tmp_path / "controller" / "bad.py").write_text(
        'from sqlalchemy import Engine, text\nQ = "UPDATE workflow_runs SET status = 1"\n'
    )
    assert sql_outside_the_store(tmp_path, ["controller"]) == [
        "controller/bad.py:1 imports sqlalchemy ['text']",
        "controller/bad.py:2 SQL text 'UPDATE workflow_runs SET status = 1'",
    ]


# One error tree per package, drawn in its errors.py docstring with every exception class
# the package defines, each drawn one raised somewhere (or the parent of one that is).
ROOTS = {
    "collector": "CollectorError",
    "controller": "ControllerError",
    "workbench": "WorkbenchError",
    "pipelines": "PipelineError",
}


def _exception_classes(package: str) -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        mod_name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        module = importlib.import_module(mod_name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == mod_name:
                found[value.__name__] = value
    return found


@pytest.mark.parametrize("package", list(ROOTS))
def test_every_exception_is_in_the_drawn_tree_and_drawn_ones_are_raised(package: str) -> None:
    errors = importlib.import_module(f"{package}.errors")
    doc = errors.__doc__ or ""
    assert re.search(rf"^\s*{ROOTS[package]}(\s{{2,}}.*)?$", doc, re.M), "the root heads the drawing"
    drawn = {ROOTS[package], *re.findall(r"\+-- ([A-Z]\w+)", doc)}
    classes = _exception_classes(package)
    root = classes[ROOTS[package]]
    assert {n for n, c in classes.items() if not issubclass(c, root)} == set(), "outside the tree"
    assert set(classes) - drawn == set(), "defined but not drawn"
    assert drawn - set(classes) == set(), "drawn but not defined"
    source = "\n".join(p.read_text() for p in (ROOT / package).rglob("*.py"))
    parents = {b.__name__ for c in classes.values() for b in c.__mro__[1:]}
    unraised = {
        n
        for n in classes
        if n != ROOTS[package] and n not in parents and not re.search(rf"raise {n}\b", source)
    }
    assert unraised == set(), "drawn but never raised"
