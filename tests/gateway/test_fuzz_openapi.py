"""schemathesis against /openapi.json of a live gateway: no input produces a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from gateway.app import create_app
from gateway.settings import Settings

pytestmark = pytest.mark.slow

# The schema is what the app publishes; building the app does not start it (no lifespan).
_SPEC = create_app(
    Settings(
        data_dir=Path("/nonexistent-gristmill"), backend="openai_upstream", upstream_url="http://x"
    )
).openapi()
schema = schemathesis.openapi.from_dict(_SPEC)


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
    response = case.call(base_url=live_gateway.url, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code < 500, (
        case.method,
        case.path,
        response.status_code,
        response.text[:300],
    )
