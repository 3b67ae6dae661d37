"""Compaction: many small ``part-*.parquet`` files of a partition -> one ``compact-*.parquet``.

Steps for one run of files (see ``_layout`` for the visibility rule):

1. merge the inputs (deduplicated by tenant+id, earliest batch wins, sorted by time) into
   ``.compact-<first>-<last>.parquet.tmp``, fsync it;
2. rename it to ``compact-<first>-<last>.parquet`` and fsync the directory: the commit. From
   here every new listing sees the compact file and none of its inputs;
3. delete the inputs on a later run, once the compact file is older than the grace period, so
   that queries which listed the inputs before the commit can still read them. (DuckDB opens
   files while it scans: a file deleted mid-query fails the query with "Cannot open file".)

A crash before 2 leaves a temporary file that ``recover`` removes (rolled back); a crash after
2 leaves hidden inputs that the next run or ``recover`` deletes (rolled forward). Readers never
see both a compact file and its inputs, and never lose rows in between.

Only files of segments below ``below_segment`` are merged: segments still in the log may be
landed again after a crash and would rewrite their ``part-`` files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ._fs import fsync_dir
from ._layout import DataFile, compact_name, partitions, scan_partition, split_visible
from .errors import CompactionFailed
from .schemas import RECORD_KINDS, SCHEMA_VERSION, SCHEMA_VERSION_KEY, RecordKind

__all__ = [
    "BATCH_ORDER_SQL",
    "DEFAULT_MIN_FILES",
    "DEFAULT_TARGET_BYTES",
    "CompactionResult",
    "Compactor",
]

log = logging.getLogger(__name__)

# Which copy of a duplicated id wins: the one from the earliest batch (a compact file ranks by
# its first segment). Shared by the catalog views, the dedup index and compaction itself.
BATCH_ORDER_SQL = r"regexp_extract(filename, '(?:part|compact)-([^/-]+)[^/]*\.parquet$', 1)"

DEFAULT_MIN_FILES = 8
DEFAULT_TARGET_BYTES = 128 << 20
_READ_BATCH_ROWS = 128 * 1024  # also the row group size of compact files


@dataclass
class CompactionResult:
    """What one compaction run did."""

    partitions: int = 0  # partitions in which files were merged
    files_merged: int = 0  # input files now superseded by a compact file
    files_written: int = 0  # compact files committed
    rows_written: int = 0
    bytes_merged: int = 0  # total size of the inputs
    bytes_written: int = 0  # total size of the compact files
    files_deleted: int = 0  # superseded files removed after their grace period


class Compactor:
    """Merges small files of each partition. One run at a time (the caller serialises runs).

    ``on_step(step, path)`` is a seam for crash tests, called after each step: ``writing``
    (first rows written to the temporary file), ``written`` (temporary file complete and
    fsynced), ``committed`` (renamed into place), ``deleted`` (superseded files removed).
    """

    def __init__(
        self,
        parquet_dir: Path,
        *,
        grace_s: float = 300.0,
        on_step: Callable[[str, Path], None] | None = None,
    ) -> None:
        if grace_s < 0:
            raise ValueError("grace_s must not be negative")
        self._root = Path(parquet_dir)
        self.grace_s = grace_s
        self.on_step = on_step

    def recover(self) -> int:
        """Finish or roll back interrupted runs; return how many superseded files were deleted.

        Removes temporary compact files (the run never committed) and deletes inputs of
        committed runs whose grace period has passed. Call before landing or compacting.
        """
        deleted = 0
        now = time.time()
        for kind in RECORD_KINDS.values():
            for directory in partitions(self._root / kind.folder):
                for stale in directory.glob(".compact-*.parquet.tmp"):
                    stale.unlink(missing_ok=True)
                _, hidden = split_visible(scan_partition(directory))
                deleted += self._delete_superseded(directory, hidden, now, self.grace_s)
        return deleted

    def run(
        self,
        *,
        below_segment: int,
        min_files: int = DEFAULT_MIN_FILES,
        target_bytes: int = DEFAULT_TARGET_BYTES,
        grace_s: float | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> tuple[CompactionResult, list[CompactionFailed]]:
        """Merge runs of at least ``min_files`` adjacent files (together at most
        ``target_bytes``) whose segments are all below ``below_segment``.

        A partition that fails is left as it was and the others go on; the failures come back
        next to the result.
        """
        if min_files < 2:
            raise ValueError("min_files must be at least 2")
        if target_bytes <= 0:
            raise ValueError("target_bytes must be positive")
        grace = self.grace_s if grace_s is None else grace_s
        if grace < 0:
            raise ValueError("grace_s must not be negative")
        result = CompactionResult()
        failures: list[CompactionFailed] = []
        with _connect() as con:
            for kind in RECORD_KINDS.values():
                for directory in partitions(self._root / kind.folder):
                    if should_stop():
                        return result, failures
                    try:
                        self._compact_partition(
                            con,
                            kind,
                            directory,
                            (below_segment, min_files, target_bytes),
                            grace,
                            result,
                        )
                    except OSError as exc:
                        failed = CompactionFailed(f"cannot compact {directory}: {exc.strerror}")
                        log.error("%s", failed)
                        failures.append(failed)
                    except CompactionFailed as exc:
                        log.error("%s", exc)
                        failures.append(exc)
        return result, failures

    # -- internals ------------------------------------------------------------------------------

    def _compact_partition(
        self,
        con: duckdb.DuckDBPyConnection,
        kind: RecordKind,
        directory: Path,
        limits: tuple[int, int, int],
        grace: float,
        result: CompactionResult,
    ) -> None:
        visible, hidden = split_visible(scan_partition(directory))
        result.files_deleted += self._delete_superseded(directory, hidden, time.time(), grace)
        runs = self._plan(con, directory, visible, *limits)
        if not runs:
            return
        result.partitions += 1
        for inputs in runs:
            written, rows = self._merge(con, kind, directory, inputs)
            result.files_written += 1
            result.files_merged += len(inputs)
            result.rows_written += rows
            result.bytes_merged += sum(f.size for f in inputs)
            result.bytes_written += written.stat().st_size
            if grace == 0:  # no query may still be reading the inputs: delete them now
                result.files_deleted += self._delete(directory, inputs)

    def _plan(
        self,
        con: duckdb.DuckDBPyConnection,
        directory: Path,
        visible: list[DataFile],
        below_segment: int,
        min_files: int,
        target_bytes: int,
    ) -> list[list[DataFile]]:
        """Runs of adjacent mergeable files; a big, foreign-version or unranged file ends a run."""
        ranged = [f for f in visible if f.last is not None and f.last < below_segment]
        small = [f for f in ranged if f.size < target_bytes]
        if len(small) < min_files:
            return []
        versions = self._schema_versions(con, directory, small)
        runs: list[list[DataFile]] = []
        current: list[DataFile] = []
        total = 0
        for f in ranged:
            mergeable = f.size < target_bytes and versions.get(f.name) == SCHEMA_VERSION
            if current and (not mergeable or total + f.size > target_bytes):
                runs.append(current)
                current, total = [], 0
            if mergeable:
                current.append(f)
                total += f.size
        if current:
            runs.append(current)
        return [run for run in runs if len(run) >= min_files]

    def _schema_versions(
        self, con: duckdb.DuckDBPyConnection, directory: Path, files: list[DataFile]
    ) -> dict[str, int | None]:
        sql = """
            SELECT file_name, value FROM parquet_kv_metadata($files)
            WHERE key = $key
        """
        params = {"files": [f.full_name for f in files], "key": SCHEMA_VERSION_KEY}
        try:
            rows = con.execute(sql, params).fetchall()
        except duckdb.Error as exc:
            raise CompactionFailed(f"cannot read file metadata in {directory}: {exc}") from exc
        versions: dict[str, int | None] = {}
        for file_name, value in rows:
            text = bytes(value).decode(errors="replace")
            versions[Path(file_name).name] = int(text) if text.isdigit() else None
        return versions

    def _merge(
        self,
        con: duckdb.DuckDBPyConnection,
        kind: RecordKind,
        directory: Path,
        inputs: list[DataFile],
    ) -> tuple[Path, int]:
        first, last = inputs[0].first, inputs[-1].last
        assert first is not None and last is not None
        final = directory / compact_name(first, last)
        temporary = directory / f".{final.name}.tmp"
        columns = ", ".join(f'"{field.name}"' for field in kind.schema)
        sql = f"""
            SELECT {columns}
            FROM read_parquet($files, filename = true, hive_partitioning = false,
                              union_by_name = true)
            QUALIFY row_number() OVER (
                PARTITION BY tenant, "{kind.id_field}" ORDER BY {BATCH_ORDER_SQL}, filename
            ) = 1
            ORDER BY "{kind.date_field}", "{kind.id_field}"
        """
        rows = 0
        try:
            with open(temporary, "wb") as handle:
                reader = con.sql(sql, params={"files": [f.full_name for f in inputs]})
                batches = reader.to_arrow_reader(_READ_BATCH_ROWS)
                with pq.ParquetWriter(handle, kind.schema, compression="zstd") as writer:
                    for batch in batches:
                        # The cast restores the schema (required fields, version metadata).
                        writer.write_batch(batch.cast(kind.schema))
                        if rows == 0:
                            self._step("writing", temporary)
                        rows += batch.num_rows
                handle.flush()
                os.fsync(handle.fileno())
            self._step("written", temporary)
            os.replace(temporary, final)
            fsync_dir(directory)
            # The grace period counts from the commit, not from when writing began.
            os.utime(final)
        except (OSError, ValueError, duckdb.Error, pa.ArrowException) as exc:
            temporary.unlink(missing_ok=True)
            # Type only for data errors: Arrow messages can quote record text.
            detail = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            raise CompactionFailed(f"cannot compact {final.name} in {directory}: {detail}") from exc
        self._step("committed", final)
        log.info("compacted %d files into %s (%d rows)", len(inputs), final.name, rows)
        return final, rows

    def _delete_superseded(
        self,
        directory: Path,
        hidden: list[tuple[DataFile, DataFile]],
        now: float,
        grace: float,
    ) -> int:
        return self._delete(directory, [f for f, cover in hidden if now - cover.mtime >= grace])

    def _delete(self, directory: Path, files: list[DataFile]) -> int:
        for f in files:
            try:
                f.path.unlink(missing_ok=True)
            except OSError as exc:  # stays hidden; a later run retries
                log.warning("cannot delete superseded %s: %s", f.name, exc.strerror)
        if files:
            try:
                fsync_dir(directory)
            except OSError as exc:  # harmless: a superseded file that reappears stays hidden
                log.warning("cannot sync %s after deleting: %s", directory, exc.strerror)
            self._step("deleted", directory)
        return len(files)

    def _step(self, step: str, path: Path) -> None:
        if self.on_step is not None:
            self.on_step(step, path)


def _connect() -> duckdb.DuckDBPyConnection:
    # One thread: compaction runs in the background next to the gateway on a small machine.
    con = duckdb.connect(
        ":memory:",
        config={
            "threads": 1,
            "autoload_known_extensions": False,
            "autoinstall_known_extensions": False,
        },
    )
    con.execute("SET TimeZone = 'UTC'")
    return con
