"""Survival and feedback queries for batch jobs: a private DuckDB connection over the store, and
the inference of what became of a suggestion from the user's later completion requests.

Server-side inference (every client: Tabby's, Continue's, OpenAI-API ones)
--------------------------------------------------------------------------
A later completion request from the same tenant, user (``user_hash``) and ``file_path`` carries
the file as it stands then, around its cursor (its prefix and suffix). For a suggestion
inserted at the end of its prefix ``P`` and before its suffix ``X``, the *inserted* text ``I``
(the suggestion, or the accepted part of it) is looked up in that later text ``O = prefix' +
suffix'`` like this:

1. **Left anchor, exact.** ``A`` = the last ``anchor_chars`` characters of ``P`` (at least
   ``min_anchor_chars`` of them not whitespace). The first occurrence of ``A`` in ``O`` ends
   where ``I`` was inserted.
2. **Left anchor, fuzzy** (only when 1 finds nothing). Lines are compared normalized (leading
   and trailing whitespace dropped, inner runs of spaces collapsed), so re-indentation and
   reformatting do not break the anchor. The last ``fuzzy_anchor_lines`` non-blank complete
   lines of ``P`` must appear as consecutive non-blank lines of ``O`` (first occurrence); the
   insertion point is then as many blank lines further as ``P`` had, after the normalized
   text of ``P``'s last, partial line (which must start that line of ``O``).
3. **Extent.** The span that now stands where ``I`` was inserted runs from the insertion point
   over as many line breaks as ``I`` has, to the end of that line (it includes the rest of the
   cursor line, ``R`` = ``X`` up to its first line break). Right anchor: if the first non-blank
   line of ``X`` after the cursor line (normalized, at least ``right_anchor_min_chars``) is one
   of the span's lines, the span ends before it (so deleted code does not swallow the next
   lines; a deleted line leaves an empty span).
4. **Complete or not.** The observation counts only if the span's last line has ended in ``O``
   within ``len(I) + len(R) + span_slack_chars`` characters of the insertion point (or the right
   anchor cut it), and the later cursor is not inside the span (the developer is not still
   typing there).
5. **Surviving text.** If the span ends with ``R`` (stripped), the surviving text is the span
   without it and is compared with ``I`` ("clean": it can replace ``I`` in the original
   prompt); otherwise ``I + R`` is compared with the whole span (not clean).
6. **Moved.** For accepted text with at least ``moved_min_chars`` non-whitespace characters that
   is not found unchanged at the anchor, a normalized occurrence of ``I`` anywhere else in
   ``O`` counts as kept (moved).

Similarity is the normalized edit similarity: ``1 - levenshtein(a, b) / max(len(a), len(b))``
over the characters (code points, as DuckDB 2's levenshtein counts) of the normalized texts
(first ``MAX_COMPARE_CHARS`` characters), 1.0 when both are empty; re-indentation alone
therefore changes nothing.

Limits: only text within ``later_prefix_chars`` before and ``later_suffix_chars`` after a later
cursor is searched (clients send a window around the cursor); the first occurrence of the anchor
wins, so code repeated verbatim above the insertion point can mislead it; lines inserted inside
a multi-line span shift its extent (the span keeps the suggestion's line count); edits of the
anchor lines themselves beyond whitespace defeat the fuzzy anchor; text typed while the cursor
stays inside the span is never observed complete; moved text is recognised only when it moved
unchanged (up to whitespace) and within the window; file paths are compared as stored (after
redaction), so a path whose redaction differs between records does not match.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _native
from ._layout import visible_files
from .compaction import BATCH_ORDER_SQL
from .errors import QueryError
from .prompts import render_template_sql
from .schemas import RECORD_KINDS

__all__ = [
    "MAX_COMPARE_CHARS",
    "FeedbackDB",
    "match_later_requests",
    "MatchParams",
    "SpanMatch",
    "edit_similarity",
    "match_later_text",
    "normalize_code",
]

MAX_COMPARE_CHARS = 2000
_LINE_WS = " \t\r\f\v"
_HSPACE = re.compile(r"[ \t\r\f\v]+")
_AROUND_NEWLINE = re.compile(r" ?\n ?")


# -- text measures (the SQL macros below compute exactly the same) ------------------------------


def normalize_code(text: str) -> str:
    """Whitespace-insensitive form: runs of spaces/tabs become one space, lines are stripped,
    leading and trailing blank lines dropped. Line breaks stay."""
    return _AROUND_NEWLINE.sub("\n", _HSPACE.sub(" ", text)).strip(" \n")


def _levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(a: str, b: str) -> float:
    """Normalized edit similarity in [0, 1] of two code texts (see the module docstring)."""
    # Characters, as DuckDB's levenshtein (2.x) counts them.
    na = normalize_code(a[:MAX_COMPARE_CHARS])
    nb = normalize_code(b[:MAX_COMPARE_CHARS])
    if na == nb:
        return 1.0
    return 1.0 - _levenshtein(na, nb) / max(len(na), len(nb))


_SPACES = frozenset(" \t\n\r\f\v")


def _nonblank(text: str) -> int:
    """Characters that are not ASCII whitespace (the SQL macro gm_nonblank counts the same)."""
    return sum(1 for ch in text if ch not in _SPACES)


# -- the matcher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchParams:
    """Knobs of the anchored matching (signals.yaml ``inference``)."""

    anchor_chars: int = 96
    min_anchor_chars: int = 12
    fuzzy_anchor_lines: int = 3
    right_anchor_min_chars: int = 6
    moved_min_chars: int = 16
    prefix_tail_chars: int = 512
    suffix_head_chars: int = 1000
    later_prefix_chars: int = 4000
    later_suffix_chars: int = 2000
    span_slack_chars: int = 400


@dataclass(frozen=True)
class SpanMatch:
    """What a later text says about an insertion. ``compare_from``/``compare_to`` are the two
    texts whose edit similarity is the survival (or hand-writing) measure."""

    found: bool = False
    complete: bool = False
    method: str = "none"  # exact | fuzzy | none
    text: str | None = None  # what stands where the insertion was (the surviving text)
    compare_from: str | None = None
    compare_to: str | None = None
    clean: bool = False  # the rest of the cursor line is intact after ``text``
    moved_found: bool = False  # the inserted text (normalized) stands elsewhere in the window


def _suffix_parts(suffix: str, params: MatchParams) -> tuple[str, str | None]:
    """(rest of the cursor line, normalized right-anchor line or None)."""
    head = suffix[: params.suffix_head_chars]
    newline = head.find("\n")
    if newline < 0:
        return head, None
    for line in head[newline + 1 :].split("\n"):
        normalized = normalize_code(line)
        if normalized:
            return head[:newline], (
                normalized if _nonblank(normalized) >= params.right_anchor_min_chars else None
            )
    return head[:newline], None


def _span_at(
    later: str,
    cursor: int,
    start: int,
    inserted: str,
    rest: str,
    right_anchor: str | None,
    slack: int,
) -> tuple[SpanMatch, int]:
    """The match for an insertion point ``start`` in ``later``, and the span's length."""
    parts = later[start : start + len(inserted) + len(rest) + slack].split("\n")
    newlines = inserted.count("\n")
    cut = None
    if right_anchor is not None:
        for index, line in enumerate(parts[: newlines + 1]):
            if normalize_code(line) == right_anchor:
                cut = index
                break
    lines = cut if cut is not None else newlines + 1
    span = "\n".join(parts[:lines])
    ended = cut is not None or len(parts) > newlines + 1
    complete = ended and (cursor <= start or cursor > start + len(span))
    rest_stripped = rest.strip(_LINE_WS)
    span_rstripped = span.rstrip(_LINE_WS)
    if not rest_stripped:
        clean, text = True, span
    elif span_rstripped.endswith(rest_stripped):
        clean, text = True, span_rstripped[: len(span_rstripped) - len(rest_stripped)]
    else:
        clean, text = False, span
    match = SpanMatch(
        found=True,
        complete=complete,
        text=text,
        compare_from=inserted if clean else inserted + rest,
        compare_to=text if clean else span,
        clean=clean,
    )
    return match, len(span)


def _after_partial(line: str, partial: str) -> int | None:
    """Index in ``line`` just after the non-whitespace characters of ``partial`` (matched in
    order, whitespace ignored), plus following whitespace when ``partial`` ended in some."""
    wanted = [ch for ch in partial if ch not in _SPACES]
    at = 0
    for ch in wanted:
        while at < len(line) and line[at] in _SPACES:
            at += 1
        if at >= len(line) or line[at] != ch:
            return None
        at += 1
    if not wanted or partial[-1:] in _SPACES:
        while at < len(line) and line[at] in _LINE_WS:
            at += 1
    return at


def _normalized_lines(text: str) -> list[str]:
    """normalize_code of every line (one regex pass over the whole text)."""
    return [line.strip(" ") for line in _HSPACE.sub(" ", text).split("\n")]


def _fuzzy_start(prefix_tail: str, truncated: bool, later: str, params: MatchParams) -> int | None:
    lines = _normalized_lines(prefix_tail)
    raw_partial = prefix_tail[prefix_tail.rfind("\n") + 1 :]
    complete_lines = lines[1:-1] if truncated else lines[:-1]
    blanks_after = 0
    for line in reversed(complete_lines):
        if line:
            break
        blanks_after += 1
    key = [line for line in complete_lines if line][-params.fuzzy_anchor_lines :]
    if not key or sum(map(_nonblank, key)) < params.min_anchor_chars:
        return None
    later_lines = later.split("\n")
    nonblank = [(i, n) for i, n in enumerate(_normalized_lines(later)) if n]
    texts = [n for _, n in nonblank]
    first, size = key[0], len(key)
    for k in range(len(texts) - size + 1):
        if texts[k] != first or texts[k : k + size] != key:
            continue
        target = nonblank[k + size - 1][0] + 1 + blanks_after
        if target >= len(later_lines):
            return None
        offset = _after_partial(later_lines[target], raw_partial)
        if offset is None:
            return None
        return sum(len(line) + 1 for line in later_lines[:target]) + offset
    return None


def match_later_text(
    prefix: str,
    suffix: str | None,
    inserted: str,
    later_prefix: str,
    later_suffix: str | None,
    params: MatchParams | None = None,
    *,
    accepted: bool = True,
) -> SpanMatch:
    """Where ``inserted`` (typed at the end of ``prefix``) stands in a later request's text.

    Prefixes and suffixes are cut to the windows in ``params`` first, exactly as the SQL fast
    path cuts them; see the module docstring for the rule.
    """
    params = params or MatchParams()
    truncated = len(prefix) > params.prefix_tail_chars
    prefix_tail = prefix[-params.prefix_tail_chars :] if params.prefix_tail_chars else ""
    later_prefix = later_prefix[-params.later_prefix_chars :] if params.later_prefix_chars else ""
    later = later_prefix + (later_suffix or "")[: params.later_suffix_chars]
    rest, right_anchor = _suffix_parts(suffix or "", params)
    cursor = len(later_prefix)
    anchor = prefix_tail[-params.anchor_chars :] if params.anchor_chars else ""
    result, start, span_len = SpanMatch(), 0, 0
    if _nonblank(anchor) >= params.min_anchor_chars:
        at = later.find(anchor)
        if at >= 0:
            start = at + len(anchor)
            result, span_len = _span_at(
                later, cursor, start, inserted, rest, right_anchor, params.span_slack_chars
            )
            result = _replace(result, method="exact")
    if not result.found:
        fuzzy = _fuzzy_start(prefix_tail, truncated, later, params)
        if fuzzy is not None:
            start = fuzzy
            result, span_len = _span_at(
                later, cursor, start, inserted, rest, right_anchor, params.span_slack_chars
            )
            result = _replace(result, method="fuzzy")
    if accepted and _nonblank(inserted) >= params.moved_min_chars:
        unchanged = (
            result.found
            and result.complete
            and normalize_code(result.compare_from or "") == normalize_code(result.compare_to or "")
        )
        if not unchanged:
            # The span itself does not count: text extended in place is an edit, not a move.
            elsewhere = later[:start] + later[start + span_len :] if result.found else later
            result = _replace(
                result, moved_found=normalize_code(inserted) in normalize_code(elsewhere)
            )
    return result


def _replace(match: SpanMatch, **changes: Any) -> SpanMatch:
    values = {f.name: getattr(match, f.name) for f in fields(match)}
    values.update(changes)
    return SpanMatch(**values)


# -- the DuckDB side --------------------------------------------------------------------------

# Rows per Arrow batch DuckDB exports: one vector. DuckDB grows a batch's buffers by
# reallocating them, and a big batch's buffers are fresh memory each time: 3M rows of store
# texts in batches of 65,536 rows took 4.4 s (2.8 s of it in the kernel, 0.9M page faults), in
# batches of 2,048 rows 1.7 s (0.2 s kernel). Callers that want bigger tables group the batches
# (pa.Table.from_batches, no copy).
EXPORT_ROWS = 2_048

_MEMORY = re.compile(r"[0-9]+(?:\.[0-9]+)?\s*(?:[KMGT]i?B)")
_WS_SQL = "(chr(32) || chr(9) || chr(13) || chr(12) || chr(11))"

# Each macro mirrors a Python function above; tests hold them equal.
_MACROS = [
    "CREATE MACRO gm_norm(x) AS trim(regexp_replace(regexp_replace(x, '[ \\t\\r\\f\\v]+', ' ', "
    "'g'), ' ?\\n ?', chr(10), 'g'), ' ' || chr(10))",
    # translate() deletes characters 5x faster than a regex replace.
    f"CREATE MACRO gm_squeeze(x) AS translate(x, {_WS_SQL} || chr(10), '')",
    "CREATE MACRO gm_nonblank(x) AS length(gm_squeeze(x))",
    # gm_nonblank(x) = 0 without rewriting the text: a search that stops at the first other
    # character (4x faster than a trim, 7x faster than deleting the whitespace).
    "CREATE MACRO gm_blank(x) AS NOT regexp_matches(x, '[^ \\t\\r\\n\\f\\v]')",
    f"CREATE MACRO gm_strip(x) AS trim(x, {_WS_SQL})",
    f"CREATE MACRO gm_rstrip(x) AS rtrim(x, {_WS_SQL})",
    # Both arguments already normalized (gm_norm of their first MAX_COMPARE_CHARS characters).
    "CREATE MACRO gm_sim_norm(na, nb) AS CASE WHEN na = nb THEN 1.0 "
    "ELSE 1.0 - levenshtein(na, nb) / greatest(length(na), length(nb)) END",
    # normalize_code(a) != normalize_code(b); equal texts skip the normalizing (most do).
    "CREATE MACRO gm_norm_differs(a, b) AS a <> b AND gm_norm(a) <> gm_norm(b)",
    # Equal texts are equal when normalized: most kept suggestions skip the normalizing.
    f"CREATE MACRO gm_similarity(a, b) AS CASE WHEN a = b THEN 1.0 ELSE gm_sim_norm(gm_norm("
    f"substr(a, 1, {MAX_COMPARE_CHARS})), gm_norm(substr(b, 1, {MAX_COMPARE_CHARS}))) END",
    "CREATE MACRO gm_render(template, prefix, suffix) AS "
    + render_template_sql("template", "prefix", "suffix"),
]


class FeedbackDB:
    """A private DuckDB connection over one store's visible Parquet files, for batch jobs.

    Views ``raw_suggestions``, ``raw_events``, ``raw_quarantine`` hold every stored row (a
    duplicate that slipped through landing appears twice) plus ``_file``, ``_row`` (where the
    row is) and ``_batch`` (the landing order: the earliest batch wins, as in the catalog).
    Tables created on it live in memory and spill to ``temp_dir`` under ``memory_limit``; with
    ``database`` (a new file) they are stored compressed there instead, for jobs whose tables
    outgrow memory. With ``keep_allocated``, DuckDB takes its blocks from up to
    ``memory_limit`` of memory it allocates once and reuses until the connection closes.
    DuckDB errors come out as QueryError.
    """

    def __init__(
        self,
        parquet_dir: Path,
        *,
        threads: int | None = None,
        memory_limit: str | None = None,
        temp_dir: Path | None = None,
        database: Path | None = None,
        keep_allocated: bool = False,
    ) -> None:
        if keep_allocated and memory_limit is None:
            raise QueryError("keep_allocated needs a memory_limit (the memory to keep)")
        self._root = Path(parquet_dir).resolve()
        self._lock = threading.Lock()
        self._files: dict[str, list[str]] = {}
        try:
            self.con = duckdb.connect(
                str(database) if database is not None else ":memory:",
                config={"autoload_known_extensions": False, "autoinstall_known_extensions": False},
            )
            self.con.execute("SET TimeZone = 'UTC'")
            self.con.execute("SET enable_progress_bar = false")
            if threads is not None:
                self.con.execute(f"SET threads = {int(threads)}")
            if memory_limit is not None:
                if not _MEMORY.fullmatch(memory_limit):
                    raise QueryError(f"memory_limit {memory_limit!r}: expected e.g. 2GB or 512MiB")
                self.con.execute(f"SET memory_limit = '{memory_limit}'")
                if keep_allocated:
                    # Freed blocks are reused, not given back to the OS and faulted in (and
                    # zeroed) again by the next table: at 10M events the dataset build spent
                    # 5 s less in the kernel.
                    self.con.execute(f"SET block_allocator_memory = '{memory_limit}'")
            if temp_dir is not None:
                escaped = str(temp_dir).replace("'", "''")
                self.con.execute(f"SET temp_directory = '{escaped}'")
            for macro in _MACROS:
                self.con.execute(macro)
            for kind in RECORD_KINDS.values():
                self._create_view(kind.folder, kind)
        except duckdb.Error as exc:
            raise QueryError(f"cannot open the feedback database: {exc}") from exc

    def _create_view(self, folder: str, kind: Any) -> None:
        files = visible_files(self._root / folder)
        self._files[folder] = files
        columns = ", ".join(f'"{f.name}"' for f in kind.schema)
        if not files:
            # Same columns, no rows: a zero-row table built from a typed NULL row.
            table = pa.Table.from_pylist([], schema=kind.schema)
            self.con.register("_gm_empty", table)
            # A table, not the registered view: views registered from Python are per cursor.
            self.con.execute(f"CREATE TABLE _empty_{folder} AS SELECT * FROM _gm_empty")
            self.con.unregister("_gm_empty")
            self.con.execute(
                f"CREATE VIEW raw_{folder} AS SELECT {columns}, '' AS _file, 0::BIGINT AS _row, "
                f"'' AS _batch FROM _empty_{folder}"
            )
            return
        self._set_files(self.con, folder)
        self.con.execute(
            f"CREATE VIEW raw_{folder} AS SELECT {columns}, filename AS _file, "
            f"file_row_number AS _row, {BATCH_ORDER_SQL} AS _batch "
            f"FROM read_parquet(getvariable('gm_{folder}_files'), hive_partitioning = true, "
            "union_by_name = true, hive_types = {'tenant': VARCHAR, 'date': DATE}, "
            "filename = true, file_row_number = true)"
        )

    def _set_files(self, con: duckdb.DuckDBPyConnection, folder: str) -> None:
        # Variables are per connection: every cursor that reads a view needs them.
        con.execute(f"SET VARIABLE gm_{folder}_files = $files", {"files": self._files[folder]})

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on the same database that can read the views."""
        cursor = self.con.cursor()
        for folder, files in self._files.items():
            if files:
                self._set_files(cursor, folder)
        return cursor

    def __enter__(self) -> FeedbackDB:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self.con.close()

    def execute(self, sql: str, params: dict[str, Any] | list[Any] | None = None) -> None:
        """Run a statement (tables and macros of the job; the store itself is read-only)."""
        try:
            self.con.execute(sql, params)
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc

    def rows(self, sql: str, params: dict[str, Any] | list[Any] | None = None) -> list[tuple]:
        try:
            return self.con.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc

    def batches(
        self,
        sql: str,
        params: dict[str, Any] | list[Any] | None = None,
        *,
        batch_rows: int = EXPORT_ROWS,
    ) -> Iterator[pa.RecordBatch]:
        """Stream a query's result as Arrow batches, on a cursor of its own (so the caller may
        run other statements, e.g. inserts, while reading)."""
        cursor = self.cursor()
        try:
            try:
                reader = cursor.sql(sql, params=params).to_arrow_reader(batch_rows)
                yield from reader
            except (duckdb.Error, OSError, pa.ArrowException) as exc:
                raise QueryError(str(exc)) from exc
        finally:
            cursor.close()

    def insert(self, table: str, batch: pa.RecordBatch | pa.Table) -> None:
        """Append Arrow rows to a table of the job (columns by name)."""
        cursor = self.con.cursor()
        try:
            cursor.register("_gm_insert", batch)
            names = ", ".join(f'"{n}"' for n in batch.schema.names)
            cursor.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _gm_insert")
            cursor.unregister("_gm_insert")
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc
        finally:
            cursor.close()


# -- survival inference over a relation of (insertion, later request) rows ----------------------

_MATCH_COLUMNS = [
    ("found", pa.bool_()),
    ("complete", pa.bool_()),
    ("method", pa.string()),
    ("text", pa.string()),
    ("compare_from", pa.string()),
    ("compare_to", pa.string()),
    ("clean", pa.bool_()),
    ("moved_found", pa.bool_()),
]


def right_sql(expr: str, chars: int) -> str:
    """SQL for the last ``chars`` characters of ``expr``: ``right()`` without its cost (DuckDB's
    right/left are an order of magnitude slower than substr on long strings)."""
    return f"substr({expr}, -{chars})" if chars > 0 else "''"


def _cut_sql(source_sql: str, keys: Sequence[str], params: MatchParams) -> str:
    """The source rows with their texts cut to the windows of ``params``."""
    return f"""
    SELECT {", ".join(keys)}, accepted, coalesce(inserted, '') AS inserted,
        {right_sql("coalesce(prefix, '')", params.prefix_tail_chars + 1)} AS prefix_tail,
        substr(coalesce(suffix, ''), 1, {params.suffix_head_chars}) AS suffix_head,
        {right_sql("coalesce(later_prefix, '')", params.later_prefix_chars)} AS later_prefix,
        substr(coalesce(later_suffix, ''), 1, {params.later_suffix_chars}) AS later_suffix
    FROM ({source_sql})"""


def _uncut_sql(source_sql: str, keys: Sequence[str], params: MatchParams) -> str:
    """The source rows as they are (the compiled and the Python matcher cut the texts to the
    windows themselves, and faster than DuckDB's substr from the end)."""
    return f"""
    SELECT {", ".join(keys)}, accepted, coalesce(inserted, '') AS inserted,
        coalesce(prefix, '') AS prefix_tail, coalesce(suffix, '') AS suffix_head,
        coalesce(later_prefix, '') AS later_prefix, coalesce(later_suffix, '') AS later_suffix
    FROM ({source_sql})"""


def _exact_sql(source_sql: str, keys: Sequence[str], params: MatchParams) -> str:
    """One pass: rows with an exact anchor get their match, the others their cut texts (for the
    Python fuzzy matcher). CASE guards keep the expensive expressions to the rows needing them
    (DuckDB evaluates every operand of AND in a projection, but only the taken CASE branch)."""
    key_list = ", ".join(keys)
    nl = "chr(10)"
    return f"""
WITH src AS ({_cut_sql(source_sql, keys, params)}),
a AS (
    SELECT *, later_prefix || later_suffix AS o, length(later_prefix) AS cur,
        {right_sql(right_sql("prefix_tail", params.prefix_tail_chars), params.anchor_chars)}
            AS anchor,
        CASE WHEN strpos(suffix_head, {nl}) > 0
             THEN substr(suffix_head, 1, strpos(suffix_head, {nl}) - 1) ELSE suffix_head END
            AS rest,
        length(inserted) - length(replace(inserted, {nl}, '')) AS m
    FROM src),
b AS (
    SELECT *, CASE WHEN gm_nonblank(anchor) >= {params.min_anchor_chars}
                   THEN instr(o, anchor) ELSE 0 END AS pos
    FROM a),
c AS (
    SELECT *, CASE WHEN pos > 0 THEN pos - 1 + length(anchor) END AS st,
        CASE WHEN pos > 0 THEN string_split(substr(o, pos + length(anchor),
            length(inserted) + length(rest) + {params.span_slack_chars}), {nl}) END AS parts,
        CASE WHEN pos > 0 THEN gm_norm(regexp_extract(suffix_head,
            '^[^\n]*\n[ \t\r\f\v\n]*([^\n]*)', 1)) END AS ranchor_line
    FROM b),
d AS (
    SELECT *, CASE WHEN pos = 0 OR gm_nonblank(ranchor_line) < {params.right_anchor_min_chars}
                   THEN 0
              ELSE coalesce(list_position(list_transform(list_slice(parts, 1, m + 1),
                   lambda t: gm_norm(t)), ranchor_line), 0) END AS cut
    FROM c),
e AS (
    SELECT *, array_to_string(list_slice(parts, 1, CASE WHEN cut > 0 THEN cut - 1 ELSE m + 1 END),
                              {nl}) AS span,
        (cut > 0 OR len(parts) > m + 1) AS ended, gm_strip(rest) AS rest_s
    FROM d),
f AS (
    SELECT *, gm_rstrip(span) AS span_r,
        rest_s = '' OR ends_with(gm_rstrip(span), rest_s) AS clean
    FROM e),
g AS (
    SELECT *,
        CASE WHEN rest_s = '' THEN span
             WHEN clean THEN substr(span_r, 1, length(span_r) - length(rest_s))
             ELSE span END AS text,
        ended AND (cur <= st OR cur > st + length(span)) AS complete,
        -- Only for the rows that need it: DuckDB evaluates an expression that occurs twice
        -- below for every row, CASE or not.
        CASE WHEN pos = 0 THEN gm_squeeze(o) END AS o_squeezed
    FROM f),
h AS (
    SELECT *, CASE WHEN clean THEN inserted ELSE inserted || rest END AS compare_from,
        CASE WHEN clean THEN text ELSE span END AS compare_to
    FROM g)
SELECT {key_list}, pos > 0 AS found, coalesce(complete, false) AS complete,
    CASE WHEN pos > 0 THEN 'exact' ELSE 'none' END AS method,
    CASE WHEN pos > 0 THEN text END AS text,
    CASE WHEN pos > 0 THEN compare_from END AS compare_from,
    CASE WHEN pos > 0 THEN compare_to END AS compare_to,
    pos > 0 AND coalesce(clean, false) AS clean,
    CASE WHEN pos > 0 AND accepted AND gm_nonblank(inserted) >= {params.moved_min_chars}
              AND NOT (complete AND gm_norm(compare_from) = gm_norm(compare_to))
         THEN instr(gm_norm(substr(o, 1, st) || substr(o, st + length(span) + 1)),
                    gm_norm(inserted)) > 0
         ELSE false END AS moved_found,
    -- A fuzzy anchor needs its key lines, whitespace removed, somewhere in the later text;
    -- a move needs the inserted text there. Rows with neither never reach Python.
    CASE WHEN pos = 0 THEN (
        instr(o_squeezed, gm_squeeze(array_to_string(list_slice(list_filter(
            list_transform(list_slice(string_split(prefix_tail, {nl}),
                CASE WHEN length(prefix_tail) > {params.prefix_tail_chars} THEN 2 ELSE 1 END,
                -2), lambda t: gm_norm(t)), lambda t: t <> ''),
            -{params.fuzzy_anchor_lines}, -1), ''))) > 0
        OR (accepted AND gm_nonblank(inserted) >= {params.moved_min_chars}
            AND instr(o_squeezed, gm_squeeze(inserted)) > 0)) ELSE false END
        AS fuzzy_possible,
    CASE WHEN pos = 0 THEN prefix_tail END AS prefix_tail,
    CASE WHEN pos = 0 THEN suffix_head END AS suffix_head,
    CASE WHEN pos = 0 THEN inserted END AS inserted,
    CASE WHEN pos = 0 THEN later_prefix END AS later_prefix,
    CASE WHEN pos = 0 THEN later_suffix END AS later_suffix,
    CASE WHEN pos = 0 THEN accepted END AS accepted
FROM h
"""


# Rows matched (and their results inserted) at once: with one group matched while the next is
# read, about 120 MB of texts at 10M events beside DuckDB's memory (65,536 rows: 450 MB).
_MATCH_ROWS = 16_384


def match_later_requests(
    db: FeedbackDB,
    source_sql: str | Sequence[tuple[str, dict[str, Any] | None]],
    keys: Sequence[tuple[str, str]],
    out_table: str,
    params: MatchParams,
    *,
    on_batch: Callable[[int], None] | None = None,
    native: bool | None = None,
    compared: bool = True,
) -> None:
    """Create ``out_table``: for each row of ``source_sql`` (an insertion and one later request),
    its ``keys`` plus the SpanMatch fields and ``similarity`` (see the module docstring).

    ``source_sql`` yields the key columns and ``prefix``, ``suffix`` (of the original request),
    ``inserted``, ``later_prefix``, ``later_suffix`` (of the later one) and ``accepted``; they are
    cut to the windows of ``params``. Every row is matched by the compiled matcher
    (feedback_store._native); without it (``native=False``, or no C compiler) rows with an exact
    anchor are matched by DuckDB's vectorized string functions and the rows without one that
    could still match go through ``match_later_text`` in Python. Both give the same results.
    ``source_sql`` may also be a sequence of (sql, parameters) chunks, matched one after the
    other into the same table (joins of a few hundred thousand texts stay in memory).
    With ``compared=False`` the compared texts (``compare_from``, ``compare_to``) are left null
    wherever the similarity is known without them (every row the compiled matcher matched):
    for callers that only need the similarity, two text columns fewer to store and copy.
    """
    if native is None:
        native = _native.available()
    sources = [(source_sql, None)] if isinstance(source_sql, str) else list(source_sql)
    key_names = [name for name, _ in keys]
    definition = ", ".join(
        [f"{name} {sql_type}" for name, sql_type in keys]
        + [f"{name} {_DUCK_TYPES[dtype]}" for name, dtype in _MATCH_COLUMNS]
        + ["similarity DOUBLE"]
    )
    db.execute(f"CREATE TABLE {out_table}_raw ({definition})")
    make_sql = _uncut_sql if native else _exact_sql

    def tables() -> Iterator[pa.Table]:
        # DuckDB's small batches, grouped (without a copy) into tables of about _MATCH_ROWS.
        group: list[pa.RecordBatch] = []
        rows = 0
        for sql, sql_params in sources:
            for batch in db.batches(make_sql(sql, key_names, params), sql_params):
                group.append(batch)
                rows += batch.num_rows
                if rows >= _MATCH_ROWS:
                    yield pa.Table.from_batches(group)
                    group, rows = [], 0
        if group:
            yield pa.Table.from_batches(group)

    def split(table: pa.Table) -> tuple[pa.Table, pa.Table]:
        if native:
            return _native_matches(table, key_names, params, compared)
        found = table.column("found")
        possible = table.column("fuzzy_possible")
        # Matched exactly, or not even matchable without whitespace: decided in SQL.
        decided = table.filter(pc.or_(found, pc.invert(possible)))
        decided = decided.select(key_names + [n for n, _ in _MATCH_COLUMNS])
        return decided, table.filter(pc.and_(pc.invert(found), possible))

    def store(table: pa.Table, decided: pa.Table, missing: pa.Table) -> None:
        if decided.num_rows:
            db.insert(f"{out_table}_raw", decided)
        if missing.num_rows:
            db.insert(f"{out_table}_raw", _python_matches(missing, key_names, params))
        if on_batch is not None:
            on_batch(table.num_rows)

    # The compiled matcher runs in a thread (ctypes releases the GIL) while DuckDB produces the
    # next batch; one batch in flight keeps the order of inserts and the memory bounded.
    with ThreadPoolExecutor(1) as pool:
        pending: tuple[pa.Table, Future[tuple[pa.Table, pa.Table]]] | None = None
        for table in tables():
            job = pool.submit(split, table)
            if pending is not None:
                store(pending[0], *pending[1].result())
            pending = (table, job)
        if pending is not None:
            store(pending[0], *pending[1].result())
    db.execute(
        f"CREATE TABLE {out_table} AS SELECT * EXCLUDE (similarity), CASE WHEN found THEN "
        f"coalesce(similarity, gm_similarity(compare_from, compare_to)) END AS similarity "
        f"FROM {out_table}_raw"
    )
    db.execute(f"DROP TABLE {out_table}_raw")


def _native_matches(
    table: pa.Table, key_names: list[str], params: MatchParams, compared: bool = True
) -> tuple[pa.Table, pa.Table]:
    """(every row, matched by the compiled matcher; no rows left for the Python matcher)."""
    result = _native.match(table, params, MAX_COMPARE_CHARS)
    flags = result.flags
    found = (flags & _native.FOUND) != 0
    method = np.where(found, np.where((flags & _native.FUZZY) != 0, "fuzzy", "exact"), "none")
    columns: dict[str, pa.Array] = {name: table.column(name) for name in key_names}
    columns["found"] = pa.array(found)
    columns["complete"] = pa.array((flags & _native.COMPLETE) != 0)
    columns["method"] = pa.array(method, pa.string())
    columns["text"] = result.text
    if compared:
        columns["compare_from"] = result.compare_from
        columns["compare_to"] = result.compare_to
    else:  # the similarity below is computed already
        columns["compare_from"] = pa.nulls(len(found), pa.large_string())
        columns["compare_to"] = columns["compare_from"]
    columns["clean"] = pa.array((flags & _native.CLEAN) != 0)
    columns["moved_found"] = pa.array((flags & _native.MOVED) != 0)
    columns["similarity"] = pc.if_else(
        pa.array(found), pa.array(result.similarity), pa.scalar(None, pa.float64())
    )
    return pa.table(columns), table.slice(0, 0)


_DUCK_TYPES = {pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR"}


def _python_matches(table: pa.Table, key_names: list[str], params: MatchParams) -> pa.Table:
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    out: dict[str, list[Any]] = {}
    for name, _ in _MATCH_COLUMNS:
        out[name] = []
    for i in range(table.num_rows):
        match = match_later_text(
            columns["prefix_tail"][i] or "",
            columns["suffix_head"][i],
            columns["inserted"][i] or "",
            columns["later_prefix"][i] or "",
            columns["later_suffix"][i],
            params,
            accepted=bool(columns["accepted"][i]),
        )
        for name, _ in _MATCH_COLUMNS:
            out[name].append(getattr(match, name))
    result = table.select(key_names)
    for name, dtype in _MATCH_COLUMNS:
        result = result.append_column(name, pa.array(out[name], type=dtype))
    return result
