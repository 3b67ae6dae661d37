"""The ingest path: raw records -> redaction -> durable sink.

Raw text exists only here, in memory. Two stages run as asyncio tasks so that redacting one
batch overlaps with fsyncing the previous one:

    submit()/submit_later() -> [redaction queue] -> redact batch (pool)
                            -> [append queue] -> sink.append (thread)

`submit` waits until its records are durable (the API answers 202 only then);
`submit_later` is for served suggestions, recorded after the response, off the request path.
Fail closed: a record whose redaction fails is replaced by a content-free quarantine record.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from feedback_store import RecordSink
from gateway.errors import IngestUnavailable
from gateway.metrics import Metrics
from redaction import RedactedFields, RedactionFailure, RedactionItem, RedactionPool

log = logging.getLogger("gristmill.ingest")


@dataclass(slots=True)
class RawRecord:
    """A record before redaction. `meta` holds only non-text fields (ids, enums, numbers, times)."""

    record_type: Literal["suggestion", "event"]
    tenant: str
    meta: dict[str, Any]
    texts: dict[str, str | None]
    file_path: str | None = None
    repo: str | None = None


@dataclass(slots=True)
class Receipt:
    stored: int = 0
    quarantined: int = 0
    dropped: int = 0


@dataclass(slots=True)
class _Job:
    records: Sequence[RawRecord]
    done: asyncio.Future[Receipt] | None
    receipt: Receipt = field(default_factory=Receipt)


_STOP = object()


class Ingestor:
    def __init__(
        self,
        pool: RedactionPool,
        sink: RecordSink,
        metrics: Metrics,
        *,
        queue_size: int = 10_000,
        batch_max: int = 128,
    ) -> None:
        self._pool = pool
        self._sink = sink
        self._metrics = metrics
        self._batch_max = batch_max
        self._redact_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self._append_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=4)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._in_flight = 0

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._redact_loop(), name="ingest-redact"),
            asyncio.create_task(self._append_loop(), name="ingest-append"),
        ]

    async def close(self) -> None:
        """Stop taking records, finish what was taken, then return."""
        if self._closing:
            return
        self._closing = True
        if self._tasks:
            await self._redact_q.put(_STOP)
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def pending(self) -> int:
        """Jobs waiting for redaction."""
        return self._redact_q.qsize()

    @property
    def in_flight(self) -> int:
        """Jobs taken and not yet settled (durable, dropped or failed): 0 means idle."""
        return self._in_flight

    async def submit(self, records: Sequence[RawRecord]) -> Receipt:
        """Returns once every record is durable (stored or quarantined) or dropped by policy."""
        if self._closing:
            raise IngestUnavailable("the gateway is shutting down; retry against another replica")
        if not records:
            return Receipt()
        done: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._in_flight += 1
        try:
            await self._redact_q.put(_Job(records, done))
        except BaseException:
            self._in_flight -= 1
            raise
        return await done

    def submit_later(self, records: Sequence[RawRecord]) -> bool:
        """Queues records without waiting. False (and a metric) when the queue is full."""
        if self._closing or not records:
            return False
        try:
            self._redact_q.put_nowait(_Job(records, None))
            self._in_flight += 1
        except asyncio.QueueFull:
            self._metrics.inc(
                "gristmill_ingest_overflow_total",
                len(records),
                help="Served records not recorded because the ingest queue was full.",
            )
            log.warning("ingest queue full: %d served records not recorded", len(records))
            return False
        return True

    async def _redact_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._redact_q.get()
            if first is _STOP:
                break
            jobs: list[_Job] = [first]
            count = len(first.records)
            while count < self._batch_max and not self._redact_q.empty():
                nxt = self._redact_q.get_nowait()
                if nxt is _STOP:
                    stopping = True
                    break
                jobs.append(nxt)
                count += len(nxt.records)
            try:
                out = await self._redact(jobs)
            except Exception as exc:  # the pool itself broke: nothing of these jobs is stored
                log.exception("redaction stage failed")
                for job in jobs:
                    _fail(job, IngestUnavailable(f"redaction unavailable: {type(exc).__name__}"))
                self._in_flight -= len(jobs)
                continue
            await self._append_q.put((jobs, out))
        await self._append_q.put(_STOP)

    async def _redact(self, jobs: list[_Job]) -> list[dict[str, Any]]:
        records = [r for job in jobs for r in job.records]
        items = [
            RedactionItem(fields=r.texts, file_path=r.file_path, repo=r.repo, tenant=r.tenant)
            for r in records
        ]
        results = await self._pool.redact_many(items)
        # Each outcome names the version that redacted it: the pool may have switched
        # policy while this batch was running (hot reload), so never ask the pool afterwards.
        out: list[dict[str, Any]] = []
        idx = 0
        for job in jobs:
            for record in job.records:
                result = results[idx]
                idx += 1
                if isinstance(result, RedactedFields):
                    row = dict(record.meta)
                    row.update(result.fields)
                    row["record_type"] = record.record_type
                    row["policy_version"] = result.policy_version
                    row["redaction_counts"] = result.counts
                    out.append(row)
                    job.receipt.stored += 1
                elif isinstance(result, RedactionFailure):
                    out.append(_quarantine(record, result.reason, result.policy_version))
                    job.receipt.quarantined += 1
                    self._metrics.inc(
                        "gristmill_quarantined_total",
                        help="Records not stored because redaction failed (fail closed).",
                        record_type=record.record_type,
                        reason=_reason_label(result.reason),
                    )
                else:
                    job.receipt.dropped += 1
                    self._metrics.inc(
                        "gristmill_dropped_by_policy_total",
                        help="Records not stored because policy says so (path rule, opt-out).",
                        record_type=record.record_type,
                    )
        return out

    async def _append_loop(self) -> None:
        while True:
            item = await self._append_q.get()
            if item is _STOP:
                return
            jobs, rows = item
            try:
                if rows:
                    await asyncio.to_thread(self._sink.append, rows)
            except Exception as exc:
                log.error("durable append failed: %s", type(exc).__name__)
                self._metrics.inc("gristmill_sink_errors_total", help="Failed durable appends.")
                for job in jobs:
                    _fail(job, IngestUnavailable(f"the durable log refused the write: {exc}"))
                self._in_flight -= len(jobs)
                continue
            self._in_flight -= len(jobs)
            for job in jobs:
                r = job.receipt
                for kind, n in (("stored", r.stored), ("quarantined", r.quarantined)):
                    if n:
                        self._metrics.inc(
                            "gristmill_records_total", n, help="Records made durable.", outcome=kind
                        )
                if job.done is not None and not job.done.done():
                    job.done.set_result(job.receipt)


def _fail(job: _Job, exc: Exception) -> None:
    if job.done is not None and not job.done.done():
        job.done.set_exception(exc)


def _reason_label(reason: str) -> str:
    # Reasons are content-free; keep the label set small anyway.
    return reason.split(":", 1)[0][:40]


def _quarantine(record: RawRecord, reason: str, version: str) -> dict[str, Any]:
    return {
        "record_type": "quarantine",
        "quarantine_id": uuid.uuid4().hex,
        "record_type_intended": record.record_type,
        "tenant": record.tenant,
        "suggestion_id": record.meta.get("suggestion_id"),
        "event_id": record.meta.get("event_id"),
        "reason": reason,
        "policy_version": version,
        "ts": datetime.now(UTC),
    }
