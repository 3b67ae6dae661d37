"""Records are validated before anything is written; RecordInvalid names the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from feedback_store import FeedbackStore, RecordInvalid, validate_records
from tests.feedback_store.records import T0, event, quarantine, suggestion


def _without(record: dict, field: str) -> dict:
    return {k: v for k, v in record.items() if k != field}


@pytest.mark.parametrize(
    "record,field",
    [
        # missing required keys
        (_without(suggestion("s1"), "completion"), "completion"),
        (_without(event("e1", "s1", "shown"), "received_at"), "received_at"),
        (_without(quarantine("q1"), "reason"), "reason"),
        # required but explicitly null
        (suggestion("s1", model_version=None), "model_version"),
        # unknown key (e.g. a raw, unredacted field that must not slip through)
        (suggestion("s1", raw_prompt="secret"), "raw_prompt"),
        # wrong types
        (suggestion("s1", choice_index="0"), "choice_index"),
        (suggestion("s1", choice_index=True), "choice_index"),  # bool is not an int here
        (suggestion("s1", choice_index=2**31), "choice_index"),  # outside int32
        (suggestion("s1", latency_ms="fast"), "latency_ms"),
        (suggestion("s1", latency_ms=float("nan")), "latency_ms"),
        (suggestion("s1", prefix=b"bytes"), "prefix"),
        (suggestion("s1", team=7), "team"),  # nullable, but not any type
        (suggestion("s1", created_at="2025-03-10T09:30:00Z"), "created_at"),
        (suggestion("s1", created_at=datetime(2025, 3, 10, 9, 30)), "created_at"),  # naive
        (suggestion("s1", redaction_counts={"EMAIL": "1"}), "redaction_counts"),
        (suggestion("s1", redaction_counts={"EMAIL": -1}), "redaction_counts"),
        (suggestion("s1", redaction_counts=[("EMAIL", 1)]), "redaction_counts"),
        (event("e1", "s1", "shown", window_s="30"), "window_s"),
        # enums
        (suggestion("s1", source="vim"), "source"),
        (event("e1", "s1", "clicked"), "type"),
        (event("e1", "s1", "accepted", accept_kind="char"), "accept_kind"),
        (quarantine("q1", record_type_intended="quarantine"), "record_type_intended"),
        # keys that name partitions and ids must not be empty
        (suggestion("s1", tenant=""), "tenant"),
        (event("", "s1", "shown"), "event_id"),
        # record_type itself
        ({**suggestion("s1"), "record_type": "suggestions"}, "record_type"),
        (_without(suggestion("s1"), "record_type"), "record_type"),
    ],
)
def test_when_record_breaks_schema_then_record_invalid_names_the_field(record, field):
    with pytest.raises(RecordInvalid) as caught:
        validate_records([record])
    assert caught.value.field == field
    assert caught.value.errors[0]["index"] == 0
    assert field in str(caught.value)


def test_when_several_records_are_bad_then_every_problem_is_listed_with_its_index():
    batch = [suggestion("s1"), suggestion("s2", source="vim"), event("e1", "s1", "nope")]
    with pytest.raises(RecordInvalid) as caught:
        validate_records(batch)
    assert [(e["index"], e["field"]) for e in caught.value.errors] == [(1, "source"), (2, "type")]


def test_when_invalid_text_is_reported_then_the_message_does_not_quote_values():
    with pytest.raises(RecordInvalid) as caught:
        validate_records([suggestion("s1", source="sk-live-SECRET")])
    assert "SECRET" not in str(caught.value)
    assert "SECRET" not in repr(caught.value.errors)


def test_when_optional_fields_are_absent_then_they_become_null_and_numbers_are_floats():
    record = suggestion("s1", latency_ms=12)
    for optional in ("team", "repo", "language", "suffix", "prompt_template"):
        del record[optional]
    (checked,) = validate_records([record])
    assert checked["team"] is None and checked["prompt_template"] is None
    assert checked["latency_ms"] == 12.0 and isinstance(checked["latency_ms"], float)


def test_when_batch_has_one_bad_record_then_nothing_of_the_batch_is_written(store: FeedbackStore):
    batch = [suggestion("s1"), event("e1", "s1", "shown"), event("e2", "s1", "shown", ts="now")]
    with pytest.raises(RecordInvalid) as caught:
        store.append(batch)
    assert caught.value.field == "ts"
    store.flush()
    catalog = store.catalog()
    assert catalog.query("SELECT count(*) FROM suggestions").rows == [(0,)]
    assert catalog.query("SELECT count(*) FROM events").rows == [(0,)]
    assert store.stats["appended"] == 0
    assert store.stats["batches_appended"] == 0


def test_when_timestamp_has_another_offset_then_the_same_instant_round_trips_exactly(
    store: FeedbackStore,
):
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2025, 3, 10, 11, 30, 0, 987654, tzinfo=plus_two)
    store.append([suggestion("s1", created_at=local)])
    store.flush()
    ((created_at,),) = store.catalog().query("SELECT created_at FROM suggestions").rows
    assert created_at == local
    assert created_at.astimezone(UTC) == datetime(2025, 3, 10, 9, 30, 0, 987654, tzinfo=UTC)
    assert created_at != T0
