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
from .feedback_queries import (
    MAX_COMPARE_CHARS,
    FeedbackDB,
    MatchParams,
    SpanMatch,
    edit_similarity,
    match_later_requests,
    match_later_text,
    normalize_code,
)
from .log import LocalLogSink, RecordSink
from .prompts import (
    FIM_FORMS,
    PROMPT_FAMILIES,
    TEMPLATE_FAMILIES,
    PromptFamily,
    render_completion,
    render_template,
    render_template_sql,
    template_name,
)
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
]
