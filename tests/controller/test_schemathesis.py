"""schemathesis against the controller's own OpenAPI schema, served by a real process: every
built-in check on (no server error, every status code and header documented, responses
that match their schema, schema-valid data accepted and invalid data refused, auth not
ignored), positive and negative data, with a token and without."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

from .conftest import ADMIN_TOKEN, ControllerProc, base_config

EXAMPLES = 40
ALL_CHECKS = list(HealthCheck)
ACCEPTANCE = schemathesis.checks.positive_data_acceptance


@schemathesis.check
def positive_data_acceptance_but_opaque(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """positive_data_acceptance, except where a schema cannot say what is valid: a batch can
    be schema-valid and still refused for its clock (ahead of the controller's), its seq
    (far past its stream's), its depth or value count, or JSON Schema's 8099.0 being an
    integer; a cursor is an opaque token only this API gives out. Those answers are held to
    naming the field instead (a 400 with the rule in it)."""
    # A silence's matchers and times in order, likewise.
    silence = case.path == "/api/v1/agent/silences" and case.method == "POST"
    opaque = case.path == "/api/v1/ingest" or "cursor" in (case.query or {}) or silence
    if not opaque:
        verdict: bool | None = ACCEPTANCE(ctx, response, case)
        return verdict
    if response.status_code == 400:
        body = response.json()
        assert body.get("field") or body.get("status") == "rejected", body
    return None


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    ctl = ControllerProc(tmp, base_config(tmp / "data"))
    ctl.start()
    try:
        schema = schemathesis.openapi.from_url(ctl.url + "/openapi.json")
        # A body over its limit is refused too, with 413: invalid data, rightly rejected.
        negative = schema.config.checks.negative_data_rejection
        negative.expected_statuses = [*negative.expected_statuses, "413"]
        yield schema
    finally:
        ctl.stop()


def negated_headers(case: schemathesis.Case) -> bool:
    info = case.meta.components.get(ParameterLocation.HEADER) if case.meta is not None else None
    return info is not None and info.mode.is_negative


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("token", [ADMIN_TOKEN, None], ids=["admin", "anonymous"])
def test_every_check_holds_on_every_operation(
    api_schema: schemathesis.BaseSchema, mode: GenerationMode, token: str | None
) -> None:
    # Driven through hypothesis directly: schemathesis' pytest plugin does not load under pytest 9.
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    for operation in operations:

        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: schemathesis.Case) -> None:
            # The token replaces a generated one, but never one a negative case removed or mangled.
            headers = {} if negated_headers(case) else auth
            case.call_and_validate(
                headers=headers,
                timeout=30,
                excluded_checks=[ACCEPTANCE],
                additional_checks=[positive_data_acceptance_but_opaque],
            )

        try:
            check()
        except Unsatisfiable:
            # Nothing to make invalid: an operation without parameters or a body.
            assert mode is GenerationMode.NEGATIVE, operation.label
            continue


def test_schema_lists_the_api(api_schema: schemathesis.BaseSchema) -> None:
    paths = set(api_schema.raw_schema["paths"])
    assert {
        "/api/v1/ingest",
        "/api/v1/status",
        "/api/v1/ingest/status",
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/v1/agent/rca",
        "/api/v1/agent/workflow/runs",
        "/api/v1/agent/workflow/runs/{run_id}",
        "/api/v1/agent/workflow/evidence/{run_id}",
        "/api/v1/agent/workflow/runs/{run_id}/replay",
        "/api/v1/agent/workflow/runs/{run_id}/approve",
        "/api/v1/agent/workflow/runs/{run_id}/reject",
        "/api/v1/agent/workflow/runs/{run_id}/rollback",
        "/api/v1/agent/workflow/audit",
    } <= paths
