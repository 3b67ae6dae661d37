"""The public surface of feedback_store: names, error statuses, schema metadata."""

from __future__ import annotations

import pytest

import feedback_store
from feedback_store import (
    EVENT_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    SUGGESTION_SCHEMA,
    CompactionFailed,
    FeedbackStore,
    LandingFailed,
    LocalLogSink,
    QueryError,
    QueryForbidden,
    QueryTimeout,
    RecordInvalid,
    RecordSink,
    SinkUnavailable,
    StoreClosed,
    StoreError,
)


def test_when_package_imported_then_all_is_exactly_the_public_api():
    expected = {
        "ACCEPTANCE_GROUPS",
        "EVENT_SCHEMA",
        "FIM_FORMS",
        "MAX_COMPARE_CHARS",
        "PROMPT_FAMILIES",
        "QUARANTINE_SCHEMA",
        "SCHEMA_VERSION",
        "SUGGESTION_SCHEMA",
        "TEMPLATE_FAMILIES",
        "Catalog",
        "CompactionFailed",
        "CompactionResult",
        "FeedbackDB",
        "FeedbackStore",
        "LandResult",
        "LandingFailed",
        "LocalLogSink",
        "MatchParams",
        "ParquetLander",
        "PromptFamily",
        "QueryError",
        "QueryForbidden",
        "QueryResult",
        "QueryTimeout",
        "RecordInvalid",
        "RecordSink",
        "SinkUnavailable",
        "SpanMatch",
        "StoreClosed",
        "StoreError",
        "edit_similarity",
        "match_later_requests",
        "match_later_text",
        "normalize_code",
        "render_completion",
        "render_template",
        "render_template_sql",
        "template_name",
        "validate_records",
    }
    assert set(feedback_store.__all__) == expected
    for name in expected:
        assert hasattr(feedback_store, name), name


@pytest.mark.parametrize(
    "error,status",
    [
        (StoreError, 500),
        (RecordInvalid, 422),
        (SinkUnavailable, 503),
        (StoreClosed, 503),  # a closed store is "unavailable" to the caller
        (LandingFailed, 500),
        (CompactionFailed, 500),
        (QueryError, 400),
        (QueryTimeout, 504),  # still a QueryError for callers that catch those
        (QueryForbidden, 403),
    ],
)
def test_when_error_raised_then_it_is_a_store_error_with_its_http_status(error, status):
    assert issubclass(error, StoreError)
    assert error.http_status == status


def test_when_record_invalid_built_then_message_and_field_name_the_first_problem():
    exc = RecordInvalid(
        [
            {"index": 2, "field": "ts", "reason": "expected a datetime"},
            {"index": 3, "field": "tenant", "reason": "required"},
        ]
    )
    assert exc.field == "ts"
    assert str(exc) == "record 2: field 'ts': expected a datetime (and 1 more)"


@pytest.mark.parametrize(
    "schema,record_type",
    [
        (SUGGESTION_SCHEMA, b"suggestion"),
        (EVENT_SCHEMA, b"event"),
        (QUARANTINE_SCHEMA, b"quarantine"),
    ],
)
def test_when_schema_inspected_then_it_carries_the_schema_version(schema, record_type):
    assert SCHEMA_VERSION == 1
    assert schema.metadata[b"gristmill.schema_version"] == b"1"
    assert schema.metadata[b"gristmill.record_type"] == record_type


def test_when_sinks_compared_then_store_and_log_share_the_record_sink_seam():
    assert issubclass(LocalLogSink, RecordSink)
    assert issubclass(FeedbackStore, RecordSink)
