"""Crash safety with real processes: SIGKILL mid-run, and a write cut short by the kernel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_store import FeedbackStore

ROOT = Path(__file__).resolve().parents[2]

# Appends batches of 1 suggestion + 3 events (+ a retried, already acknowledged event every
# fifth batch) and prints the number of acknowledged batches after each append returns.
# Small segments and a 20 ms land interval keep rolling and landing busy when the kill lands.
_WRITER = """
import sys
from pathlib import Path
from feedback_store import FeedbackStore
from tests.feedback_store.records import event, suggestion

log_dir, parquet_dir, first = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
store = FeedbackStore(log_dir, parquet_dir, segment_bytes=32 * 1024, land_interval_s=0.02)
store.start()
for b in range(first, first + 1_000_000):
    batch = [suggestion(f"s{b}")] + [event(f"e{b}-{k}", f"s{b}", "shown") for k in range(3)]
    if b % 5 == 0 and b > first:
        batch.append(event(f"e{b - 1}-0", f"s{b - 1}", "shown"))
    store.append(batch)
    print(b + 1 - first, flush=True)
"""


def _run_and_kill(log_dir: Path, parquet_dir: Path, first: int, kill_after: int, err: Path) -> int:
    """Start a writer, SIGKILL it once it has acknowledged kill_after batches; return acks."""
    with open(err, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(log_dir), str(parquet_dir), str(first)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert child.stdout is not None
        acked = 0
        for line in child.stdout:
            acked = int(line)
            if acked >= kill_after:
                os.kill(child.pid, signal.SIGKILL)
                break
        # Lines already in the pipe were printed after their append returned: they count too.
        for line in child.stdout:
            if line.strip():
                acked = int(line)
        child.wait()
    assert child.returncode == -signal.SIGKILL, err.read_text()
    return acked


@pytest.mark.slow
def test_when_writer_is_killed_mid_run_then_every_acknowledged_record_is_stored_exactly_once(
    dirs, tmp_path
):
    log_dir, parquet_dir = dirs
    acked_batches: list[int] = []
    first = 0
    for round_, kill_after in enumerate((60, 150, 25)):
        acked = _run_and_kill(log_dir, parquet_dir, first, kill_after, tmp_path / f"err{round_}")
        acked_batches += range(first, first + acked)
        first += 10_000  # the next writer uses fresh ids

    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()  # replays whatever the killed writers left in the log
    try:
        catalog = store.catalog()
        raw = "read_parquet('{}/{}/*/*/*.parquet')"
        suggestion_ids = [
            r[0]
            for r in catalog.query(
                f"SELECT suggestion_id FROM {raw.format(parquet_dir, 'suggestions')}"
            ).rows
        ]
        event_ids = [
            r[0]
            for r in catalog.query(f"SELECT event_id FROM {raw.format(parquet_dir, 'events')}").rows
        ]
    finally:
        store.close()

    # exactly once in the files themselves, not only through the deduplicating views
    assert len(suggestion_ids) == len(set(suggestion_ids))
    assert len(event_ids) == len(set(event_ids))
    stored_suggestions, stored_events = set(suggestion_ids), set(event_ids)
    for b in acked_batches:
        assert f"s{b}" in stored_suggestions
        assert {f"e{b}-{k}" for k in range(3)} <= stored_events
    # anything beyond the acknowledgements is a whole in-flight batch, never a part of one
    extra = stored_suggestions - {f"s{b}" for b in acked_batches}
    assert len(extra) <= 3  # at most one in-flight batch per killed writer
    for sid in extra:
        b = int(sid[1:])
        assert {f"e{b}-{k}" for k in range(3)} <= stored_events


# The kernel cuts the log write short (RLIMIT_FSIZE, like a full disk): the append must fail,
# the partial frame must not poison the segment, and the next (smaller) append must work.
_LIMITED_WRITER = """
import os, resource, signal, sys
from pathlib import Path
from feedback_store import FeedbackStore, SinkUnavailable
from tests.feedback_store.records import event, suggestion

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
store = FeedbackStore(Path(sys.argv[1]), Path(sys.argv[2]), land_interval_s=3600)
store.start()
resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
for b in range(100):
    try:
        store.append([suggestion(f"big{b}", prefix="x" * 8000)])
    except SinkUnavailable:
        print("refused", b, flush=True)
        break
    print("acked", b, flush=True)
store.append([event("small", "big0", "shown")])
print("acked small", flush=True)
os._exit(0)  # no close(): the next process replays the log
"""


@pytest.mark.slow
def test_when_a_log_write_is_cut_short_then_the_batch_is_refused_and_the_log_stays_readable(dirs):
    log_dir, parquet_dir = dirs
    out = subprocess.run(
        [sys.executable, "-c", _LIMITED_WRITER, str(log_dir), str(parquet_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert lines == ["acked 0", "acked 1", "acked 2", "refused 3", "acked small"], out.stderr

    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    try:
        catalog = store.catalog()
        rows = catalog.query("SELECT suggestion_id FROM suggestions ORDER BY 1").rows
        assert rows == [("big0",), ("big1",), ("big2",)]
        assert catalog.query("SELECT event_id, orphan FROM events").rows == [("small", False)]
        assert store.stats["torn_segments"] == 0
    finally:
        store.close()
