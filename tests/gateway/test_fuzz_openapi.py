"""schemathesis against /openapi.json of a live gateway: no input produces a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.slow


@pytest.fixture
def api_schema(live_gateway):
    schema = schemathesis.openapi.from_url(live_gateway.url + "/openapi.json")
    schema.live = live_gateway  # type: ignore[attr-defined]
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_when_fuzzed_then_no_server_error(case, live_gateway):
    # An admin token reaches every route; auth failures would hide the handlers from the fuzzer.
    token = live_gateway.tokens["admin"]
    response = case.call(headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, (
        case.method,
        case.path,
        response.status_code,
        response.text[:300],
    )
