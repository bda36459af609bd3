"""schemathesis against the controller's own OpenAPI schema, served by a real process: no 5xx, ever."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import ADMIN_TOKEN, ControllerProc, base_config


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    ctl = ControllerProc(tmp, base_config(tmp / "data"))
    ctl.start()
    try:
        yield schemathesis.openapi.from_url(ctl.url + "/openapi.json")
    finally:
        ctl.stop()


def test_no_input_makes_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    # Driven through hypothesis directly: schemathesis' pytest plugin does not load under pytest 9.
    operations = [result.ok() for result in api_schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 11
    for operation in operations:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            for headers in ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, {}):
                response = case.call(headers=headers, timeout=30)
                assert response.status_code < 500, (
                    case.method,
                    case.path,
                    response.status_code,
                    response.text[:300],
                )

        check()


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
    } <= paths
