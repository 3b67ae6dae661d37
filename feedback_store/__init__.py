"""Feedback store: durable ingest of redacted records, Parquet landing, DuckDB queries.

Embedded mode::

    store = FeedbackStore(log_dir, parquet_dir)
    store.start()
    store.append([{"record_type": "suggestion", ...}])   # durable on return
    store.catalog().acceptance("acme", "model_version")
    store.compact()                                      # also runs every 10 min by itself
    store.close()
"""

from .catalog import ACCEPTANCE_GROUPS, Catalog, QueryResult
from .compaction import CompactionResult
from .errors import (
    CompactionFailed,
    LandingFailed,
    QueryError,
    QueryForbidden,
    QueryTimeout,
    RecordInvalid,
    SinkUnavailable,
    StoreClosed,
    StoreError,
)
from .log import LocalLogSink, RecordSink
from .schemas import (
    EVENT_SCHEMA,
    QUARANTINE_SCHEMA,
    SCHEMA_VERSION,
    SUGGESTION_SCHEMA,
    validate_records,
)
from .store import FeedbackStore
from .writer import LandResult, ParquetLander

__all__ = [
    "ACCEPTANCE_GROUPS",
    "EVENT_SCHEMA",
    "QUARANTINE_SCHEMA",
    "SCHEMA_VERSION",
    "SUGGESTION_SCHEMA",
    "Catalog",
    "CompactionFailed",
    "CompactionResult",
    "FeedbackStore",
    "LandResult",
    "LandingFailed",
    "LocalLogSink",
    "ParquetLander",
    "QueryError",
    "QueryForbidden",
    "QueryResult",
    "QueryTimeout",
    "RecordInvalid",
    "RecordSink",
    "SinkUnavailable",
    "StoreClosed",
    "StoreError",
    "validate_records",
]
