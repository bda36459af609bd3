"""Collector settings that guard delivery: host_id follows the wire contract, and the
HTTP 500 dead-letter limit."""

from __future__ import annotations

import pytest

from collector.config import CollectorSettings, load_settings
from collector.errors import ConfigError


@pytest.mark.parametrize(
    "host_id", ["web-1", "hostname:web-1.example", "ops@db_2", "0a1b2c3d4e5f", "A" * 128]
)
def test_host_ids_the_wire_contract_takes(host_id: str) -> None:
    assert load_settings(host_id=host_id).host_id == host_id


@pytest.mark.parametrize(
    "host_id",
    [
        "rack/web-1",  # ids name files and keys downstream: no "/"
        "web-1\n",  # "$" would let a trailing newline through: another host on the wire
        "-web",
        ".hidden",
        "web 1",
        "wéb",
        "A" * 129,
        "",
    ],
)
def test_a_host_id_the_controller_would_refuse_is_refused_at_start(host_id: str) -> None:
    with pytest.raises(ConfigError, match="host_id"):
        load_settings(host_id=host_id)


def test_a_host_id_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCIDENTLAB_COLLECTOR_HOST_ID", "a/../b")
    with pytest.raises(ConfigError, match="host_id"):
        load_settings()


def test_dead_letter_after_500_defaults_to_twenty_and_zero_turns_it_off() -> None:
    assert CollectorSettings().transport.dead_letter_after_500 == 20
    assert load_settings(transport={"dead_letter_after_500": 0}).transport.dead_letter_after_500 == 0
    with pytest.raises(ConfigError, match="dead_letter_after_500"):
        load_settings(transport={"dead_letter_after_500": -1})
