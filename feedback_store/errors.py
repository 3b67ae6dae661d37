"""Exceptions raised by the feedback store.

StoreError (500)
 ├── RecordInvalid (422)      a record breaks its schema; nothing of the batch is written
 ├── SinkUnavailable (503)    the log cannot take records (not started, disk error, dir in use)
 │    └── StoreClosed (503)   the store or sink was closed
 ├── LandingFailed (500)      a segment could not be landed; it stays in the log for a retry
 ├── CompactionFailed (500)   merging Parquet files failed; the inputs stay as they were
 ├── QueryError (400)         DuckDB refused or failed the query (message included)
 │    └── QueryTimeout (504)  the query ran longer than its timeout and was interrupted
 └── QueryForbidden (403)     the statement is not read-only

Each class carries its HTTP status in ``http_status``; the gateway renders them as problem+json.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CompactionFailed",
    "LandingFailed",
    "QueryError",
    "QueryForbidden",
    "QueryTimeout",
    "RecordInvalid",
    "SinkUnavailable",
    "StoreClosed",
    "StoreError",
]


class StoreError(Exception):
    """Base class of every feedback store error."""

    http_status: int = 500


class RecordInvalid(StoreError):
    """A record breaks the schema. ``errors`` lists every problem as {index, field, reason}.

    Messages name fields and rules, never values: values may be (redacted) user text.
    """

    http_status = 422

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(
            f"record {first['index']}: field '{first['field']}': {first['reason']}{more}"
        )

    @property
    def field(self) -> str:
        """The field of the first problem."""
        return str(self.errors[0]["field"])


class SinkUnavailable(StoreError):
    """The durable log cannot accept records right now."""

    http_status = 503


class StoreClosed(SinkUnavailable):
    """The store (or its sink) has been closed."""


class LandingFailed(StoreError):
    """Landing a log segment as Parquet failed; the segment is kept and retried."""

    http_status = 500


class CompactionFailed(StoreError):
    """Merging small Parquet files failed; nothing was swapped, the next run retries."""

    http_status = 500


class QueryError(StoreError):
    """The query failed in DuckDB (syntax, binding, runtime) or had bad arguments."""

    http_status = 400


class QueryTimeout(QueryError):
    """The query was interrupted because it ran longer than its timeout."""

    http_status = 504


class QueryForbidden(StoreError):
    """The statement would change state or leave the sandbox; only reads are allowed."""

    http_status = 403
