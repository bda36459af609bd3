"""The repository layout DESIGN.md draws, and pins that must agree across files."""

from __future__ import annotations

import importlib
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
