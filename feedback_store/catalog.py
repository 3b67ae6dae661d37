"""Read-only SQL over the landed Parquet files (DuckDB), and the acceptance analytics.

Every query gets its own cursor of one in-memory DuckDB database, with these views over the
files visible when the query starts (see ``_layout``: files a compaction superseded are left
out, so a query never reads both a compact file and its inputs). The views are created once;
they read the file lists from SQL variables that each query sets on its own cursor, because
creating a view binds it, and binding reads the footer of every file it names.

- ``suggestions``, ``quarantine``: one row per tenant+id (duplicates that slipped through are
  dropped here too, the earliest landed batch wins);
- ``events``: the same, plus ``orphan`` (no suggestion with that tenant+suggestion_id);
- ``feedback``: one row per suggestion with its outcome columns.

The connection can only read files under the Parquet directory, and its configuration is locked.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ._layout import visible_files
from .compaction import BATCH_ORDER_SQL
from .errors import QueryError, QueryForbidden, QueryTimeout
from .schemas import RECORD_KINDS, RecordKind

__all__ = ["ACCEPTANCE_GROUPS", "Catalog", "QueryResult"]

_FETCH_BATCH_ROWS = 8192
_KINDS = list(RECORD_KINDS.items())

ACCEPTANCE_GROUPS = {
    "model_version": "model_version",
    "language": "coalesce(language, 'unknown')",
    "client": "coalesce(client_name, 'unknown')",
    "day": "strftime(created_at, '%Y-%m-%d')",  # the session time zone is UTC
}

# EXPLAIN [ANALYZE] or EXPLAIN (options): the statement behind it must be a SELECT too,
# because EXPLAIN ANALYZE runs it.
_EXPLAIN_PREFIX = re.compile(r"^\s*explain\s+(?:analy[sz]e\s+|\([^)]*\)\s*)?", re.IGNORECASE)

_FEEDBACK_SQL = """
CREATE VIEW feedback AS
WITH outcome AS (
    SELECT tenant, suggestion_id,
        bool_or(type = 'shown') AS any_shown,
        bool_or(type = 'accepted') AS any_accepted,
        bool_or(type = 'rejected') AS any_rejected,
        bool_or(type = 'edited') AS any_edited,
        bool_or(type = 'survived') AS any_survived,
        arg_max_null(accept_kind, (ts, event_id)) FILTER (WHERE type = 'accepted')
            AS accept_kind,
        arg_max_null(accepted_text, (ts, event_id)) FILTER (WHERE type = 'accepted')
            AS accepted_text,
        arg_max_null(final_text, (ts, event_id)) FILTER (WHERE type IN ('edited', 'survived'))
            AS final_text,
        max(ts) AS last_event_at,
        sum(length(accepted_text)) FILTER (WHERE type = 'accepted') AS text_chars,
        count(*) FILTER (
            WHERE type = 'accepted' AND accepted_text IS NULL AND accept_kind = 'full'
        ) AS full_accepts_without_text
    FROM _event_rows
    GROUP BY tenant, suggestion_id
)
SELECT s.*,
    coalesce(o.any_shown OR o.any_accepted, false) AS shown,
    coalesce(o.any_accepted, false) AS accepted,
    coalesce(o.any_rejected, false) AS rejected,
    coalesce(o.any_edited, false) AS edited,
    coalesce(o.any_survived, false) AS survived,
    o.accept_kind,
    o.accepted_text,
    o.final_text,
    o.last_event_at,
    CAST(coalesce(o.text_chars, 0)
         + coalesce(o.full_accepts_without_text, 0) * length(s.completion) AS BIGINT)
        AS accepted_chars,
    CASE
        WHEN o.any_accepted THEN 'accepted'
        WHEN o.any_rejected THEN 'rejected'
        WHEN o.any_shown THEN 'shown'
        ELSE 'served'
    END AS outcome
FROM suggestions s
LEFT JOIN outcome o ON o.tenant = s.tenant AND o.suggestion_id = s.suggestion_id
"""

_EVENTS_SQL = """
CREATE VIEW events AS
SELECT e.*, NOT EXISTS (
    SELECT 1 FROM suggestions s WHERE s.tenant = e.tenant AND s.suggestion_id = e.suggestion_id
) AS orphan
FROM _event_rows e
"""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool = False  # the statement had more rows than max_rows; rows holds the first


def _duckdb_type(dtype: pa.DataType) -> str:
    if pa.types.is_string(dtype):
        return "VARCHAR"
    if pa.types.is_int32(dtype):
        return "INTEGER"
    if pa.types.is_float64(dtype):
        return "DOUBLE"
    if pa.types.is_timestamp(dtype):
        return "TIMESTAMPTZ"
    if pa.types.is_map(dtype):
        return f"MAP({_duckdb_type(dtype.key_type)}, {_duckdb_type(dtype.item_type)})"
    raise TypeError(f"no DuckDB type for {dtype}")  # programming error in the schemas


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Catalog:
    """Read-only SQL over one Parquet directory; thread-safe.

    One in-memory DuckDB database (locked-down configuration) holds the views (built on first
    use, rebuilt when a record type gets its first files); each query runs on its own cursor,
    whose variables name the files visible at its start.
    """

    def __init__(self, parquet_dir: Path) -> None:
        self._root = Path(parquet_dir).resolve()
        self._lock = threading.Lock()
        self._db: duckdb.DuckDBPyConnection | None = None
        self._views_for: tuple[bool, ...] | None = None  # which kinds had files at build time

    def close(self) -> None:
        """Release the DuckDB database; a later query opens a new one."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                self._views_for = None

    def query(
        self,
        sql: str,
        params: list[Any] | None = None,
        *,
        max_rows: int | None = 100_000,
        timeout_s: float | None = 30,
    ) -> QueryResult:
        """Run one read-only statement (SELECT, WITH, DESCRIBE, EXPLAIN ...).

        At most ``max_rows`` rows come back (``truncated`` says whether there were more); a
        statement still running after ``timeout_s`` seconds is interrupted (QueryTimeout).
        ``None`` lifts either limit.
        """
        if max_rows is not None and max_rows < 0:
            raise QueryError("max_rows must not be negative")
        if timeout_s is not None and timeout_s <= 0:
            raise QueryError("timeout_s must be positive")
        _check_read_only(sql)
        return self._run(sql, params, max_rows=max_rows, timeout_s=timeout_s)

    def acceptance(
        self,
        tenant: str,
        group_by: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Shown/accepted counts per group for one tenant, over suggestions created in
        [since, until). Shown means a shown or accepted event; rows are sorted by group."""
        if group_by not in ACCEPTANCE_GROUPS:
            raise QueryError(f"group_by must be one of {sorted(ACCEPTANCE_GROUPS)}")
        where = ["tenant = $tenant"]
        params: dict[str, Any] = {"tenant": tenant}
        for name, bound, op in (("since", since, ">="), ("until", until, "<")):
            if bound is None:
                continue
            if bound.tzinfo is None or bound.utcoffset() is None:
                raise QueryError(f"{name} must be a timezone-aware datetime")
            where.append(f"created_at {op} CAST(${name} AS TIMESTAMPTZ)")
            params[name] = bound
        sql = f"""
            SELECT {ACCEPTANCE_GROUPS[group_by]} AS grp,
                   count(*) FILTER (WHERE shown) AS shown,
                   count(*) FILTER (WHERE accepted) AS accepted,
                   CAST(coalesce(sum(accepted_chars), 0) AS BIGINT) AS accepted_chars
            FROM feedback
            WHERE {" AND ".join(where)}
            GROUP BY grp
            ORDER BY grp
        """
        result = self._run(sql, params, max_rows=None, timeout_s=None)
        return [
            {
                "group": str(group),
                "shown": int(shown),
                "accepted": int(accepted),
                "acceptance_rate": accepted / shown if shown else 0.0,
                "accepted_chars": int(chars),
            }
            for group, shown, accepted, chars in result.rows
        ]

    # -- internals ------------------------------------------------------------------------------

    def _run(
        self,
        sql: str,
        params: list[Any] | dict[str, Any] | None,
        *,
        max_rows: int | None,
        timeout_s: float | None,
    ) -> QueryResult:
        files = {name: visible_files(self._root / kind.folder) for name, kind in _KINDS}
        try:
            cursor = self._cursor(files)
        except duckdb.Error as exc:
            raise QueryError(f"cannot open the catalog: {exc}") from exc
        try:
            with _deadline(cursor, timeout_s) as timed_out:
                try:
                    _set_files(cursor, files)
                    table, truncated = _fetch(cursor.sql(sql, params=params), max_rows)
                except duckdb.PermissionException as exc:
                    raise QueryForbidden(str(exc)) from exc
                # Errors while streaming rows reach us through Arrow as OSError/ArrowException.
                except (duckdb.Error, OSError, pa.ArrowException) as exc:
                    if timed_out.is_set():
                        raise QueryTimeout(f"query timed out after {timeout_s:g} s") from exc
                    raise QueryError(str(exc)) from exc
        finally:
            cursor.close()
        columns = [column.to_pylist(maps_as_pydicts="strict") for column in table.columns]
        return QueryResult(
            columns=list(table.column_names),
            rows=list(zip(*columns, strict=True)),
            truncated=truncated,
        )

    def _cursor(self, files: dict[str, list[str]]) -> duckdb.DuckDBPyConnection:
        landed = tuple(bool(files[name]) for name, _ in _KINDS)
        with self._lock:
            if self._db is None:
                self._db = self._open()
            if landed != self._views_for:
                _set_files(self._db, files)  # creating a view binds it, which reads them
                for (name, kind), has_files in zip(_KINDS, landed, strict=True):
                    rows_sql = self._rows_sql(name, kind, has_files)
                    self._db.execute(f"CREATE OR REPLACE VIEW _{name}_rows AS {rows_sql}")
                if self._views_for is None:  # these read the views above by name
                    self._db.execute("CREATE VIEW suggestions AS SELECT * FROM _suggestion_rows")
                    self._db.execute("CREATE VIEW quarantine AS SELECT * FROM _quarantine_rows")
                    self._db.execute(_EVENTS_SQL)
                    self._db.execute(_FEEDBACK_SQL)
                self._views_for = landed
            return self._db.cursor()

    def _open(self) -> duckdb.DuckDBPyConnection:
        db = duckdb.connect(
            ":memory:",
            config={"autoload_known_extensions": False, "autoinstall_known_extensions": False},
        )
        try:
            db.execute("SET GLOBAL TimeZone = 'UTC'")
            # Queries may read our Parquet files and nothing else on this machine.
            db.execute(f"SET allowed_directories = [{_literal(str(self._root) + '/')}]")
            db.execute("SET enable_external_access = false")
            db.execute("SET lock_configuration = true")
        except BaseException:
            db.close()
            raise
        return db

    def _rows_sql(self, name: str, kind: RecordKind, has_files: bool) -> str:
        """One row per tenant+id, with exactly the schema's columns (zero rows if no files)."""
        columns = ", ".join(f'"{field.name}"' for field in kind.schema)
        if not has_files:
            typed_nulls = ", ".join(
                f'CAST(NULL AS {_duckdb_type(field.type)}) AS "{field.name}"'
                for field in kind.schema
            )
            return f"SELECT {typed_nulls} WHERE false"
        source = (
            f"read_parquet(getvariable('{_files_variable(name)}'), hive_partitioning = true, "
            "union_by_name = true, hive_types = {'tenant': VARCHAR, 'date': DATE}, "
            "filename = true)"
        )
        return (
            f"SELECT {columns} FROM {source} "
            f'QUALIFY row_number() OVER (PARTITION BY tenant, "{kind.id_field}" '
            f"ORDER BY {BATCH_ORDER_SQL}, filename) = 1"
        )


def _files_variable(name: str) -> str:
    return f"gristmill_{name}_files"


def _set_files(con: duckdb.DuckDBPyConnection, files: dict[str, list[str]]) -> None:
    """Name the files the views read, for this connection (cursor) only."""
    for name, paths in files.items():
        # Tenant folders are percent-encoded, so paths hold no glob characters of their own.
        con.execute(f"SET VARIABLE {_files_variable(name)} = $files", {"files": paths})


def _fetch(relation: duckdb.DuckDBPyRelation | None, max_rows: int | None) -> tuple[pa.Table, bool]:
    """Stream the result; stop reading after max_rows + 1 rows (DuckDB stops producing too)."""
    if relation is None:  # a statement without a result set
        return pa.table({}), False
    reader = relation.to_arrow_reader(_FETCH_BATCH_ROWS)
    if max_rows is None:
        return reader.read_all(), False
    batches: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        batches.append(batch)
        count += batch.num_rows
        if count > max_rows:
            break
    table = pa.Table.from_batches(batches, schema=reader.schema)
    if count > max_rows:
        return table.slice(0, max_rows), True
    return table, False


@contextmanager
def _deadline(
    cursor: duckdb.DuckDBPyConnection, timeout_s: float | None
) -> Iterator[threading.Event]:
    """Interrupt the cursor's statement after timeout_s; the event tells that it happened."""
    timed_out = threading.Event()
    if timeout_s is None:
        yield timed_out
        return

    def interrupt() -> None:
        timed_out.set()
        cursor.interrupt()

    timer = threading.Timer(timeout_s, interrupt)
    timer.daemon = True
    timer.start()
    try:
        yield timed_out
    finally:
        timer.cancel()
        timer.join()  # never interrupt a cursor that is being closed or reused


def _check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    for statement in statements:
        _check_statement(statement)
    if len(statements) != 1:
        raise QueryError(f"expected exactly one statement, got {len(statements)}")


def _check_statement(statement: duckdb.Statement) -> None:
    if statement.type == duckdb.StatementType.EXPLAIN:
        inner = _EXPLAIN_PREFIX.sub("", statement.query, count=1)
        try:
            inner_statements = duckdb.extract_statements(inner)
        except duckdb.Error as exc:
            raise QueryForbidden("only EXPLAIN of a SELECT statement is allowed") from exc
        if len(inner_statements) != 1 or inner_statements[0].type != duckdb.StatementType.SELECT:
            raise QueryForbidden("only EXPLAIN of a SELECT statement is allowed")
    elif statement.type != duckdb.StatementType.SELECT:
        raise QueryForbidden(
            f"{statement.type.name} statements are not allowed; only SELECT, WITH and EXPLAIN"
        )
