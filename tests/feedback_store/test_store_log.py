"""The durable log: framing, torn tails, group commit, segment rolling and ownership."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from feedback_store import FeedbackStore, LocalLogSink, SinkUnavailable, StoreClosed
from feedback_store.codec import encode_batch
from feedback_store.log import MAGIC, read_segment
from tests.feedback_store.records import event, suggestion


def _segments(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("*.seg"))


def _write_three_batches(log_dir: Path) -> tuple[Path, list[int]]:
    """Three one-suggestion batches through a bare sink; the file and its size after each."""
    sink = LocalLogSink(log_dir)
    sizes = []
    for i in range(3):
        sink.append([suggestion(f"s{i}")])
        (segment,) = _segments(log_dir)
        sizes.append(segment.stat().st_size)
    sink.close()
    return segment, sizes


def _cut(size: Callable[[list[int]], int]) -> Callable[[bytes, list[int]], bytes]:
    return lambda data, sizes: data[: size(sizes)]


TORN_TAILS = [
    # crash in the middle of the third frame's payload
    ("cut mid-payload", _cut(lambda s: s[2] - 10), ["s0", "s1"]),
    # crash after only part of the third frame's header reached the disk
    ("cut mid-header", _cut(lambda s: s[1] + 4), ["s0", "s1"]),
    # the third frame's bytes are there but corrupt
    (
        "bad crc",
        lambda d, s: d[: s[2] - 3] + bytes([d[s[2] - 3] ^ 0xFF]) + d[s[2] - 2 :],
        ["s0", "s1"],
    ),
    # garbage after three intact frames
    ("garbage tail", lambda d, s: d + b"\x13\x00\x00\x00garbage!", ["s0", "s1", "s2"]),
    # some filesystems leave zero-filled blocks after a crash
    ("zeroed tail", lambda d, s: d + bytes(4096), ["s0", "s1", "s2"]),
    # crash while the segment file was being created
    ("partial magic", lambda d, s: d[:3], []),
    ("empty file", lambda d, s: b"", []),
]


@pytest.mark.parametrize("name,damage,expected", TORN_TAILS, ids=[t[0] for t in TORN_TAILS])
def test_when_segment_has_torn_tail_then_start_lands_intact_frames_and_ignores_the_rest(
    dirs, name, damage, expected
):
    log_dir, parquet_dir = dirs
    segment, sizes = _write_three_batches(log_dir)
    segment.write_bytes(damage(segment.read_bytes(), sizes))

    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    try:
        rows = store.catalog().query("SELECT suggestion_id FROM suggestions ORDER BY 1").rows
        assert [r[0] for r in rows] == expected
        assert store.stats["torn_segments"] == (0 if name == "empty file" else 1)
        assert _segments(log_dir) == []  # landed, then deleted
        # the store keeps working after the torn segment
        store.append([suggestion("s9")])
        store.flush()
        assert store.catalog().query("SELECT count(*) FROM suggestions").rows == [
            (len(expected) + 1,)
        ]
    finally:
        store.close()


def test_when_segment_is_read_then_each_frame_is_one_batch(tmp_path):
    segment, sizes = _write_three_batches(tmp_path)
    contents = read_segment(segment)
    assert len(contents.payloads) == 3
    assert contents.valid_bytes == contents.total_bytes == sizes[2]
    assert not contents.torn
    assert segment.read_bytes().startswith(MAGIC)


class _SlowDiskSink(LocalLogSink):
    """A sink whose first fsync takes until every writer has written.

    This stands in for a slow disk (a boundary tests cannot control); it only delays the real
    fsync, so the group commit logic under test is the production one.
    """

    def __init__(self, log_dir: Path, expected_size: int) -> None:
        super().__init__(log_dir)
        self._expected_size = expected_size
        self.first_sync_saw_all_writes = False

    def _sync(self, fd: int) -> None:
        if self.commit_fsyncs == 0:
            pause = threading.Event()
            for _ in range(3000):  # up to 30 s, far more than 8 small writes need
                if os.fstat(fd).st_size >= self._expected_size:
                    self.first_sync_saw_all_writes = True
                    break
                pause.wait(0.01)
        super()._sync(fd)


def test_when_appends_are_concurrent_then_they_share_fsyncs(tmp_path):
    writers = 8
    batches = [[event(f"e{i}", "s1", "shown")] for i in range(writers)]
    frame_bytes = sum(len(encode_batch(b)) + 8 for b in batches)
    sink = _SlowDiskSink(tmp_path, expected_size=len(MAGIC) + frame_bytes)
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(batch: list[dict]) -> None:
        start.wait()
        try:
            sink.append(batch)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()

    assert errors == []
    assert sink.first_sync_saw_all_writes
    # the first leader synced its own frame; the next leader synced the other seven at once
    assert sink.commit_fsyncs == 2
    assert sink.batches_appended == writers
    (segment,) = _segments(tmp_path)
    assert len(read_segment(segment).payloads) == writers


def test_when_segment_exceeds_segment_bytes_then_a_new_segment_is_started(dirs):
    log_dir, parquet_dir = dirs
    store = FeedbackStore(log_dir, parquet_dir, segment_bytes=4096, land_interval_s=3600)
    store.start()
    try:
        for i in range(12):
            store.append([suggestion(f"s{i}"), event(f"e{i}", f"s{i}", "shown")])  # ~1.4 KB
        store.append([suggestion(f"big{i}") for i in range(10)])  # larger than a segment
        assert len(_segments(log_dir)) >= 4
        assert store.stats["segments_pending"] == len(_segments(log_dir))
        store.flush()
        assert _segments(log_dir) == []
        assert store.stats["segments_landed"] >= 4
        catalog = store.catalog()
        assert catalog.query("SELECT count(*) FROM suggestions").rows == [(22,)]
        assert catalog.query("SELECT count(*) FROM events").rows == [(12,)]
    finally:
        store.close()


def test_when_log_dir_is_in_use_then_a_second_store_cannot_start_until_the_first_closes(dirs):
    first = FeedbackStore(*dirs, land_interval_s=3600)
    first.start()
    second = FeedbackStore(*dirs, land_interval_s=3600)
    with pytest.raises(SinkUnavailable, match="in use"):
        second.start()
    first.close()
    third = FeedbackStore(*dirs, land_interval_s=3600)
    third.start()
    third.close()


def test_when_store_restarts_then_new_segments_never_reuse_a_landed_file_name(dirs):
    log_dir, parquet_dir = dirs
    for run in range(3):
        store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
        store.start()
        store.append([suggestion(f"s{run}")])
        store.close()
    parts = sorted(p.name for p in parquet_dir.glob("suggestions/*/*/*.parquet"))
    assert len(parts) == 3 and len(set(parts)) == 3
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    try:
        rows = store.catalog().query("SELECT suggestion_id FROM suggestions ORDER BY 1").rows
        assert rows == [("s0",), ("s1",), ("s2",)]
    finally:
        store.close()


def test_when_sink_is_closed_then_append_raises_store_closed(tmp_path):
    sink = LocalLogSink(tmp_path)
    sink.append([suggestion("s1")])
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(StoreClosed):
        sink.append([suggestion("s2")])
    (segment,) = _segments(tmp_path)
    assert len(read_segment(segment).payloads) == 1
