"""Landing: append, flush, Parquet partitions, query; exactly once across crashes and retries."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feedback_store import Catalog, FeedbackStore, SinkUnavailable, StoreClosed
from tests.feedback_store.records import T0, event, quarantine, suggestion


def _raw_ids(parquet_dir: Path, folder: str, id_field: str) -> list[str]:
    """Ids straight from the files, bypassing the views' dedupe."""
    ids: list[str] = []
    for part in sorted(parquet_dir.glob(f"{folder}/tenant=*/date=*/*.parquet")):
        ids += pq.read_table(part, columns=[id_field]).column(id_field).to_pylist()
    return sorted(ids)


def _wait_until(predicate, timeout_s: float = 30.0) -> bool:
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return True
        pause.wait(0.02)
    return predicate()


def test_when_records_appended_and_flushed_then_every_field_reads_back_unchanged(store):
    record = suggestion(
        "s1",
        created_at=datetime(2025, 3, 10, 9, 30, 1, 999999, tzinfo=UTC),
        redaction_counts={"EMAIL": 2, "AWS_SECRET_KEY": 1},
        prefix="naïve — unicode ✓\n\t<EMAIL_1>",
        team=None,
    )
    store.append([record])
    store.append(
        [
            event(
                "e1",
                "s1",
                "accepted",
                accepted_text="x",
                accept_kind="line",
                elapsed_ms=812.5,
                window_s=30,
                client_name="vscode",
            )
        ]
    )
    store.append([quarantine("q1")])
    store.flush()

    catalog = store.catalog()
    result = catalog.query("SELECT * FROM suggestions")
    (row,) = result.rows
    expected = {k: v for k, v in record.items() if k != "record_type"}
    assert dict(zip(result.columns, row, strict=True)) == expected

    result = catalog.query("SELECT * FROM events")
    got = dict(zip(result.columns, result.rows[0], strict=True))
    assert got["accept_kind"] == "line" and got["elapsed_ms"] == 812.5 and got["window_s"] == 30
    assert got["orphan"] is False
    result = catalog.query("SELECT quarantine_id, reason, ts FROM quarantine")
    assert result.rows == [("q1", "redaction_timeout", T0)]
    assert store.stats["appended"] == 3 and store.stats["landed"] == 3


def test_when_landed_then_files_are_partitioned_by_tenant_and_utc_date_with_schema_version(
    store, dirs
):
    _, parquet_dir = dirs
    late_evening_west = datetime(2025, 3, 10, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    store.append([suggestion("s1", tenant="team a/b%", created_at=late_evening_west)])
    store.append([event("e1", "s1", "shown", tenant="acme")])
    store.flush()

    (part,) = parquet_dir.glob("suggestions/*/*/*.parquet")
    # the tenant is percent-encoded into one path segment; the date is the UTC date
    assert part.parent.parent.name == "tenant=team%20a%2Fb%25"
    assert part.parent.name == "date=2025-03-11"
    assert part.name.startswith("part-") and part.name.endswith(".parquet")
    assert pq.read_metadata(part).metadata[b"gristmill.schema_version"] == b"1"
    (event_part,) = parquet_dir.glob("events/*/*/*.parquet")
    assert event_part.parent.parent.name == "tenant=acme"
    assert event_part.parent.name == "date=2025-03-10"
    assert list(parquet_dir.rglob(".*.tmp")) == []

    rows = store.catalog().query("SELECT tenant FROM suggestions").rows
    assert rows == [("team a/b%",)]


def test_when_event_id_repeats_in_a_batch_across_segments_and_restarts_then_it_lands_once(dirs):
    log_dir, parquet_dir = dirs
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    store.append([suggestion("s1"), event("e1", "s1", "shown"), event("e1", "s1", "shown")])
    store.append([event("e1", "s1", "shown")])  # a client retry, same segment
    store.flush()
    store.append([event("e1", "s1", "shown"), event("e2", "s1", "accepted")])  # next segment
    store.flush()
    assert store.stats["duplicates_skipped"] == 3
    store.close()

    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()  # the seen-set is rebuilt from the Parquet files
    store.append([event("e1", "s1", "shown"), event("e2", "s1", "accepted"), suggestion("s1")])
    store.flush()
    assert store.stats["duplicates_skipped"] == 3
    store.close()

    assert _raw_ids(parquet_dir, "events", "event_id") == ["e1", "e2"]
    assert _raw_ids(parquet_dir, "suggestions", "suggestion_id") == ["s1"]


def test_when_same_event_id_comes_from_two_tenants_then_both_land(store, dirs):
    store.append(
        [event("e1", "s1", "shown", tenant="acme"), event("e1", "s1", "shown", tenant="globex")]
    )
    store.flush()
    rows = store.catalog().query("SELECT tenant FROM events ORDER BY 1").rows
    assert rows == [("acme",), ("globex",)]


def test_when_crash_after_landing_before_delete_then_replay_lands_exactly_once(dirs, tmp_path):
    log_dir, parquet_dir = dirs
    saved = tmp_path / "saved"
    saved.mkdir()
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    store.append([suggestion("s1"), event("e1", "s1", "shown")])
    store.flush()
    # segment 2 holds a duplicate of e1 plus new records
    store.append([event("e1", "s1", "shown"), event("e2", "s1", "accepted"), suggestion("s2")])
    (segment,) = log_dir.glob("*.seg")
    shutil.copy2(segment, saved / segment.name)
    store.flush()  # lands segment 2 and deletes it
    files_before = sorted(p.relative_to(parquet_dir) for p in parquet_dir.rglob("*.parquet"))
    store.close()

    # The crash: the segment is back in the log as if the delete never happened.
    shutil.copy2(saved / segment.name, log_dir / segment.name)
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    try:
        assert store.stats["segments_landed"] == 1
        assert list(log_dir.glob("*.seg")) == []
        files_after = sorted(p.relative_to(parquet_dir) for p in parquet_dir.rglob("*.parquet"))
        assert files_after == files_before  # same deterministic names, overwritten in place
        assert _raw_ids(parquet_dir, "events", "event_id") == ["e1", "e2"]
        assert _raw_ids(parquet_dir, "suggestions", "suggestion_id") == ["s1", "s2"]
    finally:
        store.close()


def test_when_a_duplicate_file_slips_in_then_the_views_still_show_each_record_once(store, dirs):
    _, parquet_dir = dirs
    store.append([suggestion("s1"), event("e1", "s1", "shown"), quarantine("q1")])
    store.flush()
    for part in list(parquet_dir.rglob("part-*.parquet")):
        shutil.copy2(part, part.with_name("part-99999999999999999999.parquet"))
    catalog = store.catalog()
    for view in ("suggestions", "events", "quarantine", "feedback"):
        assert catalog.query(f"SELECT count(*) FROM {view}").rows == [(1,)], view


def test_when_interval_passes_then_the_lander_thread_lands_without_flush(dirs):
    log_dir, parquet_dir = dirs
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=0.05)
    store.start()
    try:
        store.append([suggestion("s1"), event("e1", "s1", "shown")])
        assert _wait_until(lambda: store.stats["landed"] == 2)
        assert _wait_until(lambda: list(log_dir.glob("*.seg")) == [])
        assert store.stats["segments_pending"] == 0
        assert store.catalog().query("SELECT count(*) FROM events").rows == [(1,)]
    finally:
        store.close()


def test_when_store_closes_then_pending_records_are_landed(dirs):
    log_dir, parquet_dir = dirs
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    store.append([suggestion("s1")])
    store.close()
    store.close()  # idempotent
    assert Catalog(parquet_dir).query("SELECT suggestion_id FROM suggestions").rows == [("s1",)]
    assert list(log_dir.glob("*.seg")) == []


def test_when_store_is_not_running_then_append_and_flush_are_refused(dirs):
    store = FeedbackStore(*dirs, land_interval_s=3600)
    with pytest.raises(SinkUnavailable, match="not started"):
        store.append([suggestion("s1")])
    with pytest.raises(SinkUnavailable, match="not started"):
        store.flush()
    store.start()
    with pytest.raises(SinkUnavailable):
        store.start()
    store.close()
    with pytest.raises(StoreClosed):
        store.append([suggestion("s1")])
    with pytest.raises(StoreClosed):
        store.flush()


def test_when_empty_batch_appended_then_nothing_is_written(store, dirs):
    log_dir, _ = dirs
    store.append([])
    assert list(log_dir.glob("*.seg")) == []
    assert store.stats["batches_appended"] == 0


def test_when_a_landing_was_interrupted_then_start_removes_its_temporary_file(dirs):
    log_dir, parquet_dir = dirs
    partition = parquet_dir / "events" / "tenant=acme" / "date=2025-03-10"
    partition.mkdir(parents=True)
    stale = partition / ".part-00000000000000000007.parquet.tmp"
    stale.write_bytes(b"PAR1 half written")
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600)
    store.start()
    try:
        assert not stale.exists()
        assert store.catalog().query("SELECT count(*) FROM events").rows == [(0,)]
    finally:
        store.close()
