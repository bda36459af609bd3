"""Collector settings: YAML, environment, refusal of unknown keys and unsafe values."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.config import CollectorSettings, load_settings
from collector.errors import ConfigError


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert s.interval_s == 10.0 and s.top_n == 20
    assert s.host_root == "/"
    assert s.source_budget_s == 2.0
    assert s.hardware.refresh_interval == 300.0


def test_budget_defaults_to_half_a_short_interval() -> None:
    assert load_settings(interval_s=1.0).source_budget_s == 0.5


def test_yaml_file_and_nested_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "interval_s: 5\ntop_n: 7\nhardware:\n  refresh_interval: 60\n"
        "external:\n  - name: gpu-exporter\n    command: [echo, 'x 1']\n    format: prometheus\n"
    )
    s = load_settings(cfg)
    assert (s.interval_s, s.top_n, s.hardware.refresh_interval) == (5, 7, 60)
    assert s.external[0].name == "gpu-exporter" and s.external[0].timeout_s == 5.0


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("interval_s: 5\nhardware:\n  refresh_interval: 60\n")
    monkeypatch.setenv("INCIDENTLAB_COLLECTOR_INTERVAL_S", "3")
    monkeypatch.setenv("INCIDENTLAB_COLLECTOR_HARDWARE__REFRESH_INTERVAL", "120")
    s = load_settings(cfg)
    assert s.interval_s == 3 and s.hardware.refresh_interval == 120
    # A command-line override beats the environment.
    assert load_settings(cfg, interval_s=8).interval_s == 8


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("intervl_s: 5\n", "intervl_s: unknown key"),
        ("hardware:\n  refresh: 5\n", "hardware.refresh: unknown key"),
        ("interval_s: -1\n", "interval_s"),
        ("top_n: 0\n", "top_n"),
        ("interval_s: 1\nsource_timeout_s: 2\n", "must be below interval_s"),
        ("procfs_root: /host/proc\n", "must share a parent"),
        ("procfs_root: /host/procfs\nsysfs_root: /host/sys\n", "must end in /proc and /sys"),
        (
            "external:\n  - {name: a, command: [x], format: json}\n"
            "  - {name: a, command: [y], format: json}\n",
            "unique",
        ),
        ("external:\n  - {name: a, command: [], format: json}\n", "external.0.command"),
        ("external:\n  - {name: a, command: [x], format: xml}\n", "external.0.format"),
        ("backlog_ratio: 1.5\n", "backlog_ratio"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(tmp_path: Path, yaml_text: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")) as exc:
        load_settings(cfg)
    assert str(cfg) in str(exc.value)


def test_unknown_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCIDENTLAB_COLLECTOR_TOP_N", "lots")
    with pytest.raises(ConfigError, match="top_n"):
        load_settings()


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("interval_s: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(listy)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_settings(empty) == CollectorSettings()


def test_host_root_from_procfs(tmp_path: Path) -> None:
    s = load_settings(procfs_root=tmp_path / "proc", sysfs_root=tmp_path / "sys")
    assert s.host_root == str(tmp_path)
