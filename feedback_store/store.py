"""FeedbackStore: validated records -> durable local log -> Parquet, with a lander thread
that also compacts small Parquet files now and then."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .codec import decode_batch
from .compaction import DEFAULT_MIN_FILES, DEFAULT_TARGET_BYTES, CompactionResult, Compactor
from .errors import CompactionFailed, LandingFailed, SinkUnavailable, StoreClosed
from .log import LocalLogSink, RecordSink, read_segment
from .schemas import validate_records
from .writer import ParquetLander

__all__ = ["FeedbackStore"]

log = logging.getLogger(__name__)


class FeedbackStore(RecordSink):
    """Embedded-mode store. ``append`` is durable on return; landing runs in the background.

    It is itself a RecordSink (validating in front of its LocalLogSink), so the gateway's
    ingest path can write to it or, in distributed mode, to another sink.

    Lifecycle: ``start()`` (finishes an interrupted compaction, replays any segments left by an
    earlier run, then starts the lander thread), ``append``/``flush``/``compact``/``catalog``
    while running, ``close()`` (final landing).

    Every ``compact_interval_s`` (0: never) the lander thread runs ``compact()``. Files that a
    compaction superseded are deleted ``compact_grace_s`` after it, on a later run: queries
    that listed them before (in any process) must finish within that time.
    """

    def __init__(
        self,
        log_dir: Path,
        parquet_dir: Path,
        *,
        segment_bytes: int = 16 << 20,
        land_interval_s: float = 5.0,
        compact_interval_s: float = 600.0,
        compact_grace_s: float = 300.0,
    ) -> None:
        if land_interval_s <= 0:
            raise ValueError("land_interval_s must be positive")
        if compact_interval_s < 0:
            raise ValueError("compact_interval_s must not be negative")
        self._log_dir = Path(log_dir)
        self._parquet_dir = Path(parquet_dir)
        self._segment_bytes = segment_bytes
        self._land_interval_s = land_interval_s
        self._compact_interval_s = compact_interval_s
        self._lander = ParquetLander(self._parquet_dir)
        self._compactor = Compactor(self._parquet_dir, grace_s=compact_grace_s)
        self._compact_lock = threading.Lock()  # one compaction at a time
        self._sink: LocalLogSink | None = None
        self._state = "new"  # new -> running -> closed
        self._state_lock = threading.Lock()
        self._land_lock = threading.Lock()  # one landing pass at a time (thread, flush, close)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counts_lock = threading.Lock()
        self._counts = {
            "appended": 0,
            "landed": 0,
            "duplicates_skipped": 0,
            "segments_landed": 0,
            "torn_segments": 0,
            "land_errors": 0,
            "compactions": 0,
            "files_compacted": 0,
            "superseded_deleted": 0,
            "compact_errors": 0,
        }
        self._last_land_error: str | None = None
        self._last_compact_error: str | None = None
        self._catalog = Catalog(self._parquet_dir)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Land every segment an earlier run left behind, then start the lander thread."""
        with self._state_lock:
            if self._state != "new":
                raise SinkUnavailable(f"store cannot start: it is {self._state}")
            # The sink takes the directory lock first: a second process must not even read.
            sink = LocalLogSink(self._log_dir, segment_bytes=self._segment_bytes)
            try:
                self._lander.warm_up()
                # Before the dedup index: it reads the files a finished compaction left visible.
                deleted = self._compactor.recover()
                with self._counts_lock:
                    self._counts["superseded_deleted"] += deleted
                highest_landed = self._lander.load_seen()
                # Segment ids also name Parquet files, so they must never repeat a landed one.
                sink.advance_ids(past=highest_landed)
                with self._land_lock:
                    self._land_sealed(sink)
            except BaseException:
                sink.close()
                raise
            self._sink = sink
            self._thread = threading.Thread(
                target=self._run_lander, name="feedback-store-lander", daemon=True
            )
            self._thread.start()
            self._state = "running"

    def close(self) -> None:
        """Stop the lander thread, seal the log and land everything; idempotent."""
        with self._state_lock:
            if self._state == "closed":
                return
            was_running = self._state == "running"
            self._state = "closed"
        if not was_running:
            return
        self._stop.set()
        assert self._thread is not None and self._sink is not None
        self._thread.join()
        self._sink.close()  # seals the active segment; later appends get StoreClosed
        try:
            with self._land_lock:
                self._land_sealed(self._sink)
        finally:
            self._catalog.close()

    def __enter__(self) -> FeedbackStore:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- records --------------------------------------------------------------------------------

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Validate the batch (RecordInvalid names the field) and make it durable."""
        sink = self._running_sink()
        checked = validate_records(records)
        sink.append(checked)
        with self._counts_lock:
            self._counts["appended"] += len(checked)

    def flush(self) -> None:
        """Seal the active segment and land everything now (blocking)."""
        sink = self._running_sink()
        with self._land_lock:
            sink.seal()
            self._land_sealed(sink)

    def compact(
        self,
        *,
        min_files: int = DEFAULT_MIN_FILES,
        target_bytes: int = DEFAULT_TARGET_BYTES,
        grace_s: float | None = None,
    ) -> CompactionResult:
        """Merge, per partition, runs of at least ``min_files`` small files (up to
        ``target_bytes`` together) whose log segments are landed and deleted; delete files
        superseded more than ``grace_s`` ago (default: the store's ``compact_grace_s``)."""
        sink = self._running_sink()
        return self._compact(sink, min_files, target_bytes, grace_s, should_stop=lambda: False)

    def catalog(self) -> Catalog:
        """The store's catalog (one shared DuckDB database; queries see landed records)."""
        return self._catalog

    @property
    def stats(self) -> dict[str, Any]:
        with self._counts_lock:
            out: dict[str, Any] = dict(self._counts)
            out["last_land_error"] = self._last_land_error
            out["last_compact_error"] = self._last_compact_error
        sink = self._sink
        out["state"] = self._state
        out["segments_pending"] = sink.pending_segments() if sink is not None else 0
        out["commit_fsyncs"] = sink.commit_fsyncs if sink is not None else 0
        out["batches_appended"] = sink.batches_appended if sink is not None else 0
        out["bytes_appended"] = sink.bytes_appended if sink is not None else 0
        out["ids_indexed"] = self._lander.seen_count()
        return out

    # -- internals ------------------------------------------------------------------------------

    def _running_sink(self) -> LocalLogSink:
        state, sink = self._state, self._sink
        if state == "closed":
            raise StoreClosed("the feedback store is closed")
        if state != "running" or sink is None:
            raise SinkUnavailable("the feedback store is not started")
        return sink

    def _compact(
        self,
        sink: LocalLogSink,
        min_files: int,
        target_bytes: int,
        grace_s: float | None,
        should_stop: Callable[[], bool],
    ) -> CompactionResult:
        with self._compact_lock:
            try:
                with self._land_lock:  # no segment is being landed or deleted meanwhile
                    below = sink.first_unlanded_id()
                result, failures = self._compactor.run(
                    below_segment=below,
                    min_files=min_files,
                    target_bytes=target_bytes,
                    grace_s=grace_s,
                    should_stop=should_stop,
                )
            except OSError as exc:
                failed = CompactionFailed(f"compaction failed: {exc.strerror}")
                result, failures = CompactionResult(), [failed]
        with self._counts_lock:
            self._counts["compactions"] += 1
            self._counts["files_compacted"] += result.files_merged
            self._counts["superseded_deleted"] += result.files_deleted
            if failures:
                self._counts["compact_errors"] += len(failures)
                self._last_compact_error = str(failures[-1])
        if failures:
            more = f" (and {len(failures) - 1} more partitions)" if len(failures) > 1 else ""
            raise CompactionFailed(f"{failures[0]}{more}") from failures[0]
        return result

    def _run_lander(self) -> None:
        assert self._sink is not None
        last_compaction = time.monotonic()
        while not self._stop.wait(self._land_interval_s):
            try:
                with self._land_lock:
                    self._sink.seal()
                    self._land_sealed(self._sink)
            except Exception as exc:  # the thread must outlive any one bad round
                # Segments stay in the log; the next round retries them.
                log.error("landing round failed: %s", type(exc).__name__)
            due = time.monotonic() - last_compaction >= self._compact_interval_s
            if self._compact_interval_s and due:
                last_compaction = time.monotonic()
                try:
                    self._compact(
                        self._sink,
                        DEFAULT_MIN_FILES,
                        DEFAULT_TARGET_BYTES,
                        None,
                        should_stop=self._stop.is_set,
                    )
                except Exception as exc:  # counted in stats; the next interval retries
                    log.error("compaction failed: %s", type(exc).__name__)

    def _land_sealed(self, sink: LocalLogSink) -> None:
        """Land sealed segments oldest first; delete each once its Parquet files are durable."""
        for segment in sink.sealed_segments():
            try:
                contents = read_segment(segment.path)
                records = [rec for payload in contents.payloads for rec in decode_batch(payload)]
                result = self._lander.land(f"{segment.id:020d}", records)
            except (OSError, ValueError, KeyError, LandingFailed) as exc:
                with self._counts_lock:
                    self._counts["land_errors"] += 1
                    self._last_land_error = f"segment {segment.id}: {type(exc).__name__}"
                # Type only: messages of decoding errors can quote record text.
                log.error("landing log segment %s failed: %s", segment.id, type(exc).__name__)
                if isinstance(exc, LandingFailed):
                    raise
                raise LandingFailed(f"cannot land log segment {segment.id}") from exc
            if contents.torn:
                # Bytes after the last intact frame: a batch whose append never returned.
                log.warning(
                    "log segment %s: ignored %d bytes of torn tail",
                    segment.id,
                    contents.total_bytes - contents.valid_bytes,
                )
            try:
                sink.delete(segment.id)
            except OSError as exc:
                # Harmless: a segment landed again rewrites the same files.
                log.warning("cannot delete landed log segment %s: %s", segment.id, exc.strerror)
            with self._counts_lock:
                self._counts["landed"] += result.landed
                self._counts["duplicates_skipped"] += result.duplicates
                self._counts["segments_landed"] += 1
                self._counts["torn_segments"] += int(contents.torn)
