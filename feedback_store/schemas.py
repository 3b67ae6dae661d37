"""Arrow schemas of the stored records and the validation of incoming records against them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from .errors import RecordInvalid

__all__ = [
    "EVENT_SCHEMA",
    "QUARANTINE_SCHEMA",
    "RECORD_KINDS",
    "SCHEMA_VERSION",
    "SUGGESTION_SCHEMA",
    "RecordKind",
    "validate_records",
]

SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = b"gristmill.schema_version"

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_COUNTS = pa.map_(pa.string(), pa.int32())
_INT32_MAX = 2**31 - 1
_MAX_ERRORS = 50


def _schema(record_type: str, fields: list[tuple[str, pa.DataType, bool]]) -> pa.Schema:
    metadata = {
        SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode(),
        b"gristmill.record_type": record_type.encode(),
    }
    return pa.schema(
        [pa.field(name, dtype, nullable=nullable) for name, dtype, nullable in fields],
        metadata=metadata,
    )


_S, _N = False, True  # nullable flag: required / nullable

SUGGESTION_SCHEMA = _schema(
    "suggestion",
    [
        ("suggestion_id", pa.string(), _S),
        ("request_id", pa.string(), _S),
        ("tenant", pa.string(), _S),
        ("team", pa.string(), _N),
        ("repo", pa.string(), _N),
        ("user_hash", pa.string(), _S),
        ("client_name", pa.string(), _N),
        ("client_version", pa.string(), _N),
        ("source", pa.string(), _S),
        ("language", pa.string(), _N),
        ("file_path", pa.string(), _N),
        ("prefix", pa.string(), _S),
        ("suffix", pa.string(), _N),
        ("completion", pa.string(), _S),
        ("choice_index", pa.int32(), _S),
        ("model_version", pa.string(), _S),
        ("backend", pa.string(), _S),
        ("latency_ms", pa.float64(), _S),
        ("created_at", _TIMESTAMP, _S),
        ("policy_version", pa.string(), _S),
        ("redaction_counts", _COUNTS, _S),
        ("prompt_template", pa.string(), _N),
    ],
)

EVENT_SCHEMA = _schema(
    "event",
    [
        ("event_id", pa.string(), _S),
        ("suggestion_id", pa.string(), _S),
        ("tenant", pa.string(), _S),
        ("user_hash", pa.string(), _S),
        ("type", pa.string(), _S),
        ("ts", _TIMESTAMP, _S),
        ("accepted_text", pa.string(), _N),
        ("final_text", pa.string(), _N),
        ("accept_kind", pa.string(), _N),
        ("elapsed_ms", pa.float64(), _N),
        ("window_s", pa.float64(), _N),
        ("client_name", pa.string(), _N),
        ("source", pa.string(), _S),
        ("policy_version", pa.string(), _S),
        ("redaction_counts", _COUNTS, _S),
        ("received_at", _TIMESTAMP, _S),
    ],
)

QUARANTINE_SCHEMA = _schema(
    "quarantine",
    [
        ("quarantine_id", pa.string(), _S),
        ("record_type_intended", pa.string(), _S),
        ("tenant", pa.string(), _S),
        ("suggestion_id", pa.string(), _N),
        ("event_id", pa.string(), _N),
        ("reason", pa.string(), _S),
        ("policy_version", pa.string(), _S),
        ("ts", _TIMESTAMP, _S),
    ],
)


def _check_string(value: Any) -> tuple[Any, str | None]:
    return value, None if isinstance(value, str) else "expected a string"


def _check_int32(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool) or not isinstance(value, int):
        return value, "expected an integer"
    return value, None if -_INT32_MAX - 1 <= value <= _INT32_MAX else "out of int32 range"


def _check_float(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value, "expected a number"
    value = float(value)
    return value, None if math.isfinite(value) else "expected a finite number"


def _check_timestamp(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, datetime):
        return value, "expected a datetime"
    # Naive datetimes are ambiguous; storing them would silently shift by the host's offset.
    if value.tzinfo is None or value.utcoffset() is None:
        return value, "expected a timezone-aware datetime"
    return value, None


def _check_counts(value: Any) -> tuple[Any, str | None]:
    if not isinstance(value, Mapping):
        return value, "expected a mapping of str to int"
    for key, count in value.items():
        if not isinstance(key, str):
            return value, "expected string keys"
        if isinstance(count, bool) or not isinstance(count, int):
            return value, "expected integer counts"
        if not 0 <= count <= _INT32_MAX:
            return value, "counts must be between 0 and 2**31-1"
    return dict(value), None


def _checker(dtype: pa.DataType) -> Callable[[Any], tuple[Any, str | None]]:
    if pa.types.is_string(dtype):
        return _check_string
    if pa.types.is_int32(dtype):
        return _check_int32
    if pa.types.is_float64(dtype):
        return _check_float
    if pa.types.is_timestamp(dtype):
        return _check_timestamp
    if pa.types.is_map(dtype):
        return _check_counts
    raise TypeError(f"no validator for Arrow type {dtype}")  # programming error in the schemas


class RecordKind:
    """How one record type is stored: schema, folder, idempotency key, partition date field."""

    def __init__(
        self,
        record_type: str,
        schema: pa.Schema,
        folder: str,
        id_field: str,
        date_field: str,
        enums: dict[str, frozenset[str]],
        non_empty: frozenset[str],
    ) -> None:
        self.record_type = record_type
        self.schema = schema
        self.folder = folder
        self.id_field = id_field
        self.date_field = date_field
        self.enums = enums
        self.non_empty = non_empty
        self.fields: dict[str, pa.Field] = {f.name: f for f in schema}
        # Resolved once: validation runs for every appended record.
        self.checks = [(f.name, f.nullable, _checker(f.type)) for f in schema]
        # Fast path (see _fast_validate): strings inline, the few other types via checkers.
        self.keys = frozenset(self.fields) | {"record_type"}
        self.defaults: dict[str, Any] = dict.fromkeys(self.fields)
        strings = [f for f in schema if pa.types.is_string(f.type)]
        self.required_strings = tuple(f.name for f in strings if not f.nullable)
        self.optional_strings = tuple(f.name for f in strings if f.nullable)
        self.other_checks = tuple(c for c in self.checks if c[2] is not _check_string)
        self.enum_items = tuple(enums.items())


# Where a record came from: the API that served or reported it.
_SOURCES = frozenset({"openai", "chat", "tabby", "continue", "continue_edit", "native"})
_KEYS = frozenset({"tenant", "policy_version"})

RECORD_KINDS: dict[str, RecordKind] = {
    "suggestion": RecordKind(
        "suggestion",
        SUGGESTION_SCHEMA,
        "suggestions",
        id_field="suggestion_id",
        date_field="created_at",
        enums={"source": _SOURCES},
        non_empty=_KEYS | {"suggestion_id", "request_id", "user_hash", "model_version"},
    ),
    "event": RecordKind(
        "event",
        EVENT_SCHEMA,
        "events",
        id_field="event_id",
        date_field="ts",
        enums={
            "source": _SOURCES,
            "type": frozenset({"shown", "accepted", "rejected", "edited", "survived"}),
            "accept_kind": frozenset({"full", "line", "word"}),
        },
        non_empty=_KEYS | {"event_id", "suggestion_id", "user_hash"},
    ),
    "quarantine": RecordKind(
        "quarantine",
        QUARANTINE_SCHEMA,
        "quarantine",
        id_field="quarantine_id",
        date_field="ts",
        enums={"record_type_intended": frozenset({"suggestion", "event"})},
        non_empty=_KEYS | {"quarantine_id", "reason"},
    ),
}


def _validate_one(index: int, record: Any, errors: list[dict[str, Any]]) -> dict[str, Any] | None:
    def problem(field: str, reason: str) -> None:
        errors.append({"index": index, "field": field, "reason": reason})

    if not isinstance(record, Mapping):
        problem("record_type", "record is not a mapping")
        return None
    record_type = record.get("record_type")
    kind = RECORD_KINDS.get(record_type) if isinstance(record_type, str) else None
    if kind is None:
        problem("record_type", f"expected one of {sorted(RECORD_KINDS)}")
        return None
    before = len(errors)
    for key in record:
        if key != "record_type" and key not in kind.fields:
            problem(str(key), f"unknown field for a {kind.record_type} record")
    out: dict[str, Any] = {"record_type": kind.record_type}
    for name, nullable, check in kind.checks:
        value = record.get(name)
        if value is None:
            if not nullable:
                problem(name, "required" if name not in record else "must not be null")
            out[name] = None
            continue
        value, reason = check(value)
        if reason is None and name in kind.non_empty and value == "":
            reason = "must not be empty"
        if reason is None and name in kind.enums and value not in kind.enums[name]:
            reason = f"expected one of {sorted(kind.enums[name])}"
        if reason is not None:
            problem(name, reason)
        out[name] = value
    return out if len(errors) == before else None


def _fast_validate(record: Any) -> dict[str, Any] | None:
    """The common, valid case at a fraction of the cost; None means "let the slow path judge"."""
    if not isinstance(record, Mapping):
        return None
    kind = RECORD_KINDS.get(record.get("record_type"))
    if kind is None or not kind.keys.issuperset(record):
        return None
    out = {**kind.defaults, **record}
    for name in kind.required_strings:
        if type(out[name]) is not str:
            return None
    for name in kind.optional_strings:
        value = out[name]
        if value is not None and type(value) is not str:
            return None
    for name in kind.non_empty:
        if not out[name]:
            return None
    for name, allowed in kind.enum_items:
        value = out[name]
        if value is not None and value not in allowed:
            return None
    for name, nullable, check in kind.other_checks:
        value = out[name]
        if value is None:
            if not nullable:
                return None
            continue
        value, reason = check(value)
        if reason is not None:
            return None
        out[name] = value
    return out


def validate_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check every record against its schema; return normalised copies or raise RecordInvalid.

    Absent nullable fields become None; numbers for float fields become floats. All problems of
    the batch are reported (up to 50) so a client can fix them in one go.
    """
    if isinstance(records, str | bytes | Mapping):
        raise RecordInvalid(
            [{"index": 0, "field": "records", "reason": "expected a sequence of records"}]
        )
    errors: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        checked = _fast_validate(record)
        if checked is None:
            checked = _validate_one(index, record, errors)
        if checked is not None:
            out.append(checked)
        if len(errors) >= _MAX_ERRORS:
            break
    if errors:
        raise RecordInvalid(errors[:_MAX_ERRORS])
    return out
