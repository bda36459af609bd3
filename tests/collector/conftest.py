"""Collector test helpers: settings on fixture roots, fake capabilities, temporary sources."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from collector.config import CollectorSettings
from collector.info import Capabilities
from collector.sources import SourceContext
from collector.sources import registry as source_registry

ALL_SOURCES = sorted(
    [
        "cgroup",
        "disk",
        "ebpf",
        "external",
        "gpu",
        "hardware",
        "host",
        "network",
        "perf",
        "processes",
        "psi",
        "sockets",
    ]
)
FIXTURE_HOSTS = Path(__file__).resolve().parents[1] / "fixtures" / "hosts"

NO_CAPS = Capabilities(frozenset(), 2, False, "test: no BPF", False, "test: no NVML")
ROOT_CAPS = Capabilities(
    frozenset({"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_BPF"}),
    2,
    False,
    "test: no bcc",
    False,
    "test",
)


def settings_for(root: Path, **kw: object) -> CollectorSettings:
    return CollectorSettings.model_validate(
        {"procfs_root": root / "proc", "sysfs_root": root / "sys", "interval_s": 1.0} | kw
    )


def context_for(root: Path, caps: Capabilities = NO_CAPS, **kw: object) -> SourceContext:
    return SourceContext(settings=settings_for(root, **kw), capabilities=caps)


@pytest.fixture
def modern_host(tmp_path: Path) -> Path:
    """A writable copy of the modern fixture host."""
    root = tmp_path / "modern"
    shutil.copytree(FIXTURE_HOSTS / "modern", root)
    return root


@pytest.fixture
def legacy_host(tmp_path: Path) -> Path:
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE_HOSTS / "legacy", root)
    return root


@pytest.fixture
def temp_sources(monkeypatch: pytest.MonkeyPatch) -> dict[str, type]:
    """Register test-only sources; monkeypatch restores the registry afterwards."""
    monkeypatch.setattr(source_registry, "_REGISTRY", dict(source_registry._REGISTRY))
    return source_registry._REGISTRY
