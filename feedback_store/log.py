"""Record sinks: the RecordSink seam and the local durable log (append-only segment files).

Segment file: 8 magic bytes, then frames. A frame is one appended batch:
``<u32 payload length><u32 crc32(length bytes + payload)><payload: orjson list of records>``.
A batch is therefore all-or-nothing: a frame torn by a crash fails its length or CRC check and
the reader stops there (a torn tail is only ever the last frame, see ``append``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._fs import fsync_dir, write_all
from .codec import encode_batch
from .errors import RecordInvalid, SinkUnavailable, StoreClosed

__all__ = ["LocalLogSink", "RecordSink", "SegmentContents", "SegmentInfo", "read_segment"]

log = logging.getLogger(__name__)

MAGIC = b"GMLOG01\n"
_HEADER = struct.Struct("<II")
_LENGTH = struct.Struct("<I")
SEGMENT_SUFFIX = ".seg"
MAX_BATCH_BYTES = 1 << 30
_LOCK_NAME = "LOCK"
_sync = getattr(os, "fdatasync", os.fsync)  # fdatasync still persists the file size


class RecordSink(ABC):
    """Where validated, redacted records go first. Implementations are thread-safe."""

    @abstractmethod
    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Store the batch; return only once it is durable. Raises SinkUnavailable."""

    @abstractmethod
    def close(self) -> None:
        """Make everything durable and release resources; idempotent."""


@dataclass(frozen=True)
class SegmentInfo:
    id: int
    path: Path


@dataclass(frozen=True)
class SegmentContents:
    payloads: list[bytes]
    valid_bytes: int
    total_bytes: int

    @property
    def torn(self) -> bool:
        """True when bytes after the last good frame were ignored (crash mid-write)."""
        return self.total_bytes > self.valid_bytes


def segment_path(log_dir: Path, segment_id: int) -> Path:
    return log_dir / f"{segment_id:020d}{SEGMENT_SUFFIX}"


def _frame(payload: bytes) -> bytes:
    length = _LENGTH.pack(len(payload))
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def read_segment(path: Path) -> SegmentContents:
    """Return the payloads of every intact frame; stop at the first torn or corrupt one."""
    data = path.read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        # Crash while the file was being created (or not our file): nothing acknowledged in it.
        return SegmentContents([], 0, len(data))
    payloads: list[bytes] = []
    pos = len(MAGIC)
    end_of_data = len(data)
    while pos + _HEADER.size <= end_of_data:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        end = start + length
        # Zero length is never written; zeroed blocks after a crash would otherwise pass.
        if length == 0 or end > end_of_data:
            break
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(_LENGTH.pack(length))) != crc:
            break
        payloads.append(payload)
        pos = end
    return SegmentContents(payloads, pos, end_of_data)


class _Active:
    __slots__ = ("fd", "frames", "id", "size")

    def __init__(self, segment_id: int, fd: int) -> None:
        self.id = segment_id
        self.fd = fd
        self.size = len(MAGIC)
        self.frames = 0


class LocalLogSink(RecordSink):
    """Append-only segment files in one directory, with group commit.

    Concurrent ``append`` callers write their frame under a lock, then share fsyncs: one caller
    (the leader) syncs everything written so far while the others wait for it. ``seal`` closes
    the active segment so the lander can take it; a new one is created on the next append.
    Only one sink may own a directory at a time (``flock`` on ``LOCK``).
    """

    def __init__(
        self, log_dir: Path, *, segment_bytes: int = 16 << 20, first_segment_id: int = 1
    ) -> None:
        if segment_bytes <= len(MAGIC):
            raise ValueError("segment_bytes is too small")
        self._dir = Path(log_dir)
        self._segment_bytes = segment_bytes
        self._dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock_directory()
        existing = [seg.id for seg in self._list_segments()]
        self._next_id = max([first_segment_id, *(i + 1 for i in existing)])
        self._cond = threading.Condition()
        self._active: _Active | None = None
        self._written = 0  # frames written (tickets handed out)
        self._synced = 0  # frames known durable
        self._syncing = False
        self._closed = False
        self._failure: OSError | None = None
        self.commit_fsyncs = 0
        self.batches_appended = 0
        self.bytes_appended = 0

    # -- public -------------------------------------------------------------------------------

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        payload = encode_batch(records)
        if len(payload) > MAX_BATCH_BYTES:
            raise RecordInvalid([{"index": 0, "field": "records", "reason": "batch over 1 GiB"}])
        frame = _frame(payload)
        with self._cond:
            self._check_usable()
            segment = self._segment_for(len(frame))
            try:
                write_all(segment.fd, frame)
            except OSError as exc:
                self._undo_partial_write(segment, exc)
            segment.size += len(frame)
            segment.frames += 1
            self._written += 1
            self._wait_durable(self._written)
            self.batches_appended += 1
            self.bytes_appended += len(frame)

    def advance_ids(self, *, past: int) -> None:
        """Make every new segment id larger than ``past`` (ids already used elsewhere)."""
        with self._cond:
            self._next_id = max(self._next_id, past + 1)

    def seal(self) -> int | None:
        """Close the active segment if it holds frames; return its id (None if nothing to seal)."""
        with self._cond:
            if self._active is None or self._active.frames == 0:
                return None
            return self._seal_locked()

    def sealed_segments(self) -> list[SegmentInfo]:
        """Segment files that are not being appended to, oldest first."""
        with self._cond:
            active = self._active.id if self._active is not None else None
            return [seg for seg in self._list_segments() if seg.id != active]

    def pending_segments(self) -> int:
        """Sealed segments plus the active one if it holds frames."""
        with self._cond:
            active = self._active
            if active is None:
                return len(self._list_segments())
            sealed = sum(1 for seg in self._list_segments() if seg.id != active.id)
            return sealed + (1 if active.frames else 0)

    def first_unlanded_id(self) -> int:
        """The oldest segment id that may still be landed (again): every lower segment is gone.

        Syncs the directory first, so those deletions survive a power loss: a landed segment
        that reappeared would replay over Parquet files that compaction has merged since.
        Call it while nothing deletes segments (the store holds its landing lock).
        """
        fsync_dir(self._dir)  # outside the lock: appends must not wait for it
        with self._cond:
            return min([self._next_id, *(seg.id for seg in self._list_segments())])

    def delete(self, segment_id: int) -> None:
        """Remove a landed segment. Not fsynced: a segment that reappears lands idempotently."""
        with self._cond:
            if self._active is not None and self._active.id == segment_id:
                raise ValueError("cannot delete the active segment")
            segment_path(self._dir, segment_id).unlink(missing_ok=True)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            try:
                if self._active is not None:
                    self._seal_locked()
            finally:
                os.close(self._lock_fd)  # releases the flock

    # -- internals ------------------------------------------------------------------------------

    def _sync(self, fd: int) -> None:
        """Flush one segment file to stable storage (the unit of group commit)."""
        _sync(fd)

    def _lock_directory(self) -> int:
        fd = os.open(self._dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SinkUnavailable(f"log directory {self._dir} is in use by another sink") from exc
        return fd

    def _list_segments(self) -> list[SegmentInfo]:
        found = []
        for entry in os.scandir(self._dir):
            stem, dot, suffix = entry.name.partition(".")
            if dot and "." + suffix == SEGMENT_SUFFIX and stem.isdigit():
                found.append(SegmentInfo(int(stem), Path(entry.path)))
        return sorted(found, key=lambda seg: seg.id)

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreClosed("the log sink is closed")
        if self._failure is not None:
            raise SinkUnavailable("the log sink failed to sync earlier") from self._failure

    def _segment_for(self, frame_bytes: int) -> _Active:
        while True:
            segment = self._active
            if segment is None:
                segment = self._active = self._create_segment()
                return segment
            if segment.frames and segment.size + frame_bytes > self._segment_bytes:
                self._seal_locked()  # may wait for a sync in flight, so look again afterwards
                continue
            return segment

    def _create_segment(self) -> _Active:
        segment_id = self._next_id
        self._next_id += 1
        path = segment_path(self._dir, segment_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise SinkUnavailable(f"cannot create log segment {path.name}") from exc
        try:
            write_all(fd, MAGIC)
            os.fsync(fd)
            fsync_dir(self._dir)  # the segment must survive a crash along with its frames
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise SinkUnavailable(f"cannot create log segment {path.name}") from exc
        return _Active(segment_id, fd)

    def _undo_partial_write(self, segment: _Active, exc: OSError) -> None:
        # A partial frame followed by good frames would hide them from the reader: cut it off.
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError as truncate_exc:
            self._failure = truncate_exc
            self._cond.notify_all()
        raise SinkUnavailable(f"write to log segment failed: {exc.strerror}") from exc

    def _wait_durable(self, ticket: int) -> None:
        while self._synced < ticket:
            if self._failure is not None:
                raise SinkUnavailable("log sync failed") from self._failure
            if self._syncing:
                self._cond.wait()
                continue
            segment = self._active
            # Unsynced frames always live in the active segment: sealing syncs before closing.
            assert segment is not None
            target = self._written
            self._syncing = True
            self._cond.release()
            error: OSError | None = None
            try:
                self._sync(segment.fd)
            except OSError as exc:
                error = exc
            finally:
                self._cond.acquire()
                self._syncing = False
                if error is None:
                    self._synced = max(self._synced, target)
                    self.commit_fsyncs += 1
                else:
                    self._failure = error
                self._cond.notify_all()

    def _seal_locked(self) -> int | None:
        while self._syncing:  # never close an fd a leader is syncing
            self._cond.wait()
        segment = self._active
        if segment is None:  # another thread sealed it while we waited
            return None
        self._active = None
        try:
            if self._failure is None and self._synced < self._written:
                try:
                    self._sync(segment.fd)
                except OSError as exc:
                    self._failure = exc
                    raise SinkUnavailable("log sync failed while sealing") from exc
                self._synced = self._written
                self.commit_fsyncs += 1
        finally:
            os.close(segment.fd)
            self._cond.notify_all()
        return segment.id
