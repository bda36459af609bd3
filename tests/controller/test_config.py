"""Controller settings refuse unsafe values at start, naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.auth import Authenticator, Principal
from controller.config import AuthSettings, load_settings
from controller.errors import AuthError, ConfigError, Forbidden

TOKENS = "auth:\n  tokens:\n    - {name: a, role: collector, token: 'aaaaaaaaaaaaaaaaaaaa'}\n"
HTTP = "server: {allow_http: true}\n"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("port: 8443\n", "auth is on but no tokens"),
        ("auth:\n  tokens:\n    - {name: a, role: collector, token: short}\n", "tokens are 16 to 4096"),
        (
            "auth:\n  tokens:\n    - {name: a, role: collector, token: 'aaaaaaaaaaaaaaaaaaaa'}\n"
            "    - {name: b, role: admin, token: 'aaaaaaaaaaaaaaaaaaaa'}\n",
            "same secret",
        ),
        (
            "auth:\n  tokens:\n    - {name: a, role: root, token: 'aaaaaaaaaaaaaaaaaaaa'}\n",
            "auth.tokens.0.role",
        ),
        ("auth:\n  tokens:\n    - {name: a, role: admin}\n", "exactly one of token and token_file"),
        (
            TOKENS + "ingest: {max_body_bytes: 2048, max_decompressed_bytes: 1024}\n",
            "at least ingest.max_body_bytes",
        ),
        (TOKENS + "tls_cert_file: /x.pem\n", "go together"),
        (TOKENS + "database_url: mysql://x\n", "sqlite:///... or postgresql"),
        (TOKENS + "hot_state: {stale_after_s: 60, missing_after_s: 30}\n", "missing_after_s"),
        (TOKENS + "bogus: 1\n", "bogus: unknown key"),
        (TOKENS, "serves HTTPS only"),
    ],
)
def test_unsafe_settings_are_refused(tmp_path: Path, yaml_text: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_settings(cfg)


def test_auth_off_needs_no_tokens_and_urls_translate(tmp_path: Path) -> None:
    plain = {"allow_http": True}
    s = load_settings(auth={"enabled": False}, data_dir=tmp_path, server=plain)
    assert s.sqlalchemy_url == f"sqlite:///{tmp_path}/agent/workflow_runs.db"
    pg = load_settings(auth={"enabled": False}, database_url="postgresql://u@h/db", server=plain)
    assert pg.sqlalchemy_url == ("postgresql+psycopg://u@h/db")
    assert Authenticator(s.auth).authenticate(None) == Principal("anonymous", "admin")


def test_token_file_and_roles(tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text("from-a-file-0123456789\n")
    auth = Authenticator(AuthSettings(tokens=[{"name": "n", "role": "collector", "token_file": f}]))  # type: ignore[list-item]
    p = auth.authenticate("Bearer from-a-file-0123456789")
    assert p == Principal("n", "collector")
    auth.require(p, "ingest")
    with pytest.raises(Forbidden):
        auth.require(p, "read")
    for bad in (None, "Basic xyz", "Bearer wrong-wrong-wrong-wrong"):
        with pytest.raises(AuthError):
            auth.authenticate(bad)
    missing = {"tokens": [{"name": "n", "role": "collector", "token_file": str(tmp_path / "nope")}]}
    with pytest.raises(ConfigError, match="cannot read"):  # at start, naming the token
        load_settings(auth=missing, server={"allow_http": True})


def test_replicas_share_partitions_only_on_postgresql_with_the_bus_and_lease_rules_apply_then() -> None:
    plain = {"allow_http": True}
    pg = "postgresql://u@h/db"
    bus = {"enabled": True}
    assert load_settings(auth={"enabled": False}, database_url=pg, server=plain, bus=bus).shares_partitions
    assert not load_settings(auth={"enabled": False}, database_url=pg, server=plain).shares_partitions
    assert not load_settings(auth={"enabled": False}, server=plain, bus=bus).shares_partitions
    opted_out = {"share_partitions": False, "poll_interval_s": 30}
    s = load_settings(auth={"enabled": False}, database_url=pg, server=plain, bus=bus, ha=opted_out)
    assert not s.shares_partitions  # one leader consumes all; its slow poll is no lease's business
    with pytest.raises(ConfigError, match="lease_s must be at least twice"):
        load_settings(auth={"enabled": False}, database_url=pg, server=plain, bus=bus, ha={"lease_s": 1.5})
    # The stream keeps at least the window a new owner rebuilds (none without the workflow).
    short = bus | {"max_age_s": 120}
    with pytest.raises(ConfigError, match=r"max_age_s must be at least workflow\.window_s"):
        load_settings(auth={"enabled": False}, server=plain, bus=short)
    load_settings(auth={"enabled": False}, server=plain, bus=short, workflow={"enabled": False})
