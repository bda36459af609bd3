"""The sampler isolates sources: a failure or an overrun is that source's error only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from collector.errors import ConfigError, SourceError, UnknownSourceError
from collector.sampler import Sampler, enabled_source_names
from collector.sources import Source, SourceResult, register

from .conftest import ALL_SOURCES, NO_CAPS, settings_for

RELEASE = threading.Event()


class Good(Source):
    name = "t_good"

    def sample(self) -> SourceResult:
        return SourceResult.ok("kernel", {"n": 1})


class Boom(Source):
    name = "t_boom"

    def sample(self) -> SourceResult:
        raise RuntimeError("kaboom")


class Refuses(Source):
    name = "t_refuses"

    def sample(self) -> SourceResult:
        raise SourceError("device went away")


class Stuck(Source):
    name = "t_stuck"

    def sample(self) -> SourceResult:
        RELEASE.wait(10)
        return SourceResult.ok("file", {"late": True})


@pytest.fixture
def sources(temp_sources: dict[str, type]) -> None:
    for cls in (Good, Boom, Refuses, Stuck):
        register(cls)


def make(tmp_path: Path, names: list[str], **kw: object) -> Sampler:
    settings = settings_for(Path("/"), enabled_sources=names, interval_s=1.0, source_timeout_s=0.2, **kw)
    return Sampler(settings, capabilities=NO_CAPS)


@pytest.mark.usefixtures("sources")
def test_failures_stay_in_their_source(tmp_path: Path) -> None:
    sampler = make(tmp_path, ["t_good", "t_boom", "t_refuses"])
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
    s = snap["sources"]
    assert s["t_good"]["status"] == "ok" and s["t_good"]["data"] == {"n": 1}
    assert s["t_boom"]["status"] == "error" and s["t_boom"]["reason"] == "RuntimeError: kaboom"
    assert s["t_refuses"]["status"] == "error" and s["t_refuses"]["reason"] == "device went away"
    assert snap["interval_s"] is None
    stats = sampler.stats()
    assert stats["t_good"]["ok"] == 1 and stats["t_boom"]["errors"] == 1


@pytest.mark.usefixtures("sources")
def test_an_overrun_is_reported_and_never_doubled(tmp_path: Path) -> None:
    RELEASE.clear()
    sampler = make(tmp_path, ["t_good", "t_stuck"])
    try:
        first = sampler.sample()["sources"]
        assert first["t_good"]["status"] == "ok"
        assert first["t_stuck"]["status"] == "error"
        assert "timed out after" in first["t_stuck"]["reason"]
        second = sampler.sample()["sources"]
        assert second["t_good"]["status"] == "ok"
        assert "still running" in second["t_stuck"]["reason"]
        RELEASE.set()
        time.sleep(0.05)
        third = sampler.sample()["sources"]
        # The late answer was discarded; a fresh call ran and answered in time.
        assert third["t_stuck"]["status"] == "ok"
        stats = sampler.stats()["t_stuck"]
        assert stats["timeouts"] == 1 and stats["errors"] == 2 and stats["ok"] == 1
    finally:
        RELEASE.set()
        sampler.close()


@pytest.mark.usefixtures("sources")
def test_duration_is_the_sources_own(tmp_path: Path) -> None:
    RELEASE.clear()
    sampler = make(tmp_path, ["t_good", "t_stuck"])
    try:
        snap = sampler.sample()
        assert snap["sources"]["t_good"]["duration_s"] < 0.1
    finally:
        RELEASE.set()
        sampler.close()


def test_unknown_and_empty_source_lists_are_refused() -> None:
    with pytest.raises(UnknownSourceError, match="unknown source 'nope'; known sources: cgroup"):
        enabled_source_names(settings_for(Path("/"), enabled_sources=["host", "nope"]))
    with pytest.raises(UnknownSourceError):
        enabled_source_names(settings_for(Path("/"), force_fallback=["nope"]))
    with pytest.raises(ConfigError, match="no source is enabled"):
        enabled_source_names(settings_for(Path("/"), enabled_sources=["host"], disabled_sources=["host"]))


def test_default_sources_are_every_registered_source() -> None:
    assert enabled_source_names(settings_for(Path("/"))) == ALL_SOURCES


def test_info_lists_disabled_sources(modern_host: Path) -> None:
    sampler = Sampler(settings_for(modern_host, enabled_sources=["host", "psi"]), capabilities=NO_CAPS)
    try:
        info = sampler.info().to_dict()
    finally:
        sampler.close()
    assert info["host_id"] == "0123456789abcdef0123456789abcdef"
    assert info["hostname"] == "node-a"
    assert info["sources"]["host"] == {"enabled": True, "path": "file", "reason": None}
    assert info["sources"]["gpu"] == {"enabled": False, "path": "none", "reason": "disabled by configuration"}
    assert info["versions"]["event_format"] == "1"


def test_host_id_without_machine_id_uses_the_hostname(legacy_host: Path) -> None:
    sampler = Sampler(settings_for(legacy_host, enabled_sources=["host"]), capabilities=NO_CAPS)
    try:
        assert sampler.info().host_id == "hostname:legacy-node"
    finally:
        sampler.close()
