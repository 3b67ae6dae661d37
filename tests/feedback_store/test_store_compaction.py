"""Compaction: small part files merged per partition, views unchanged, pending segments untouched,
superseded files kept for a grace period, restart and automatic runs."""

from __future__ import annotations

import re
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feedback_store import (
    SCHEMA_VERSION,
    Catalog,
    CompactionFailed,
    CompactionResult,
    FeedbackStore,
    SinkUnavailable,
)
from tests.feedback_store.records import T0, event, quarantine, suggestion

VIEWS = ("suggestions", "events", "quarantine", "feedback")


def land_batches(store: FeedbackStore, count: int, *, start: int = 0) -> None:
    """One segment (so one part file per partition) per batch: 2 tenants, 2 days, 3 kinds."""
    for b in range(start, start + count):
        day = timedelta(days=b % 2)
        batch = []
        for tenant in ("acme", "globex"):
            sid = f"{tenant}-s{b}"
            at = T0 + day + timedelta(minutes=(7 * b) % 60)  # not in landing order
            batch += [
                suggestion(sid, tenant=tenant, created_at=at, model_version=f"m{b % 3}"),
                event(f"{sid}-shown", sid, "shown", tenant=tenant, at=day + timedelta(hours=1)),
                event(f"{sid}-acc", sid, "accepted", tenant=tenant, accept_kind="full"),
                quarantine(f"{tenant}-q{b}", tenant=tenant, ts=at),
            ]
        if b % 4 == 3:  # a client retry: an already stored event id, dropped at landing
            batch.append(event(f"acme-s{b - 1}-shown", f"acme-s{b - 1}", "shown"))
        store.append(batch)
        store.flush()


def snapshot(catalog: Catalog) -> dict[str, list[tuple]]:
    out = {view: catalog.query(f"SELECT * FROM {view} ORDER BY ALL").rows for view in VIEWS}
    out["acceptance"] = [tuple(r.values()) for r in catalog.acceptance("acme", "model_version")]
    return out


def data_files(parquet_dir: Path, prefix: str = "") -> list[Path]:
    return sorted(parquet_dir.glob(f"*/tenant=*/date=*/{prefix}*.parquet"))


def raw_ids(parquet_dir: Path, folder: str, id_field: str) -> list[str]:
    """Ids in every data file on disk, not through the views: duplicates would show here."""
    ids: list[str] = []
    for path in parquet_dir.glob(f"{folder}/tenant=*/date=*/*.parquet"):
        ids += pq.read_table(path, columns=[id_field]).column(id_field).to_pylist()
    return sorted(ids)


BATCHES = 16  # the template: segments 1..16; day one holds the even batches


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A log and Parquet directory with BATCHES landed batches, built once per module."""
    root = tmp_path_factory.mktemp("template")
    store = FeedbackStore(root / "log", root / "parquet", land_interval_s=3600)
    store.start()
    land_batches(store, BATCHES)
    store.close()
    return root


@pytest.fixture
def landed(dirs, template) -> tuple[Path, Path]:
    log_dir, parquet_dir = dirs
    shutil.copytree(template / "log", log_dir)
    shutil.copytree(template / "parquet", parquet_dir)
    return dirs


@pytest.fixture
def compacting(landed) -> FeedbackStore:
    store = FeedbackStore(*landed, land_interval_s=3600, compact_interval_s=0)
    store.start()
    yield store
    store.close()


def test_when_compacted_then_views_return_the_same_rows_from_one_file_per_partition(
    compacting, dirs
):
    _, parquet_dir = dirs
    catalog = compacting.catalog()
    before = snapshot(catalog)
    landed = data_files(parquet_dir)
    assert len(landed) == 112  # per tenant: 16 suggestion, 16 quarantine, 24 event files
    landed_bytes = sum(p.stat().st_size for p in landed)

    result = compacting.compact(grace_s=0)

    assert isinstance(result, CompactionResult)
    # 3 kinds x 2 tenants x 2 days
    assert (result.partitions, result.files_written, result.files_merged) == (12, 12, 112)
    assert result.files_deleted == 112 and result.rows_written == BATCHES * 2 * 4
    assert result.bytes_merged == landed_bytes
    assert 0 < result.bytes_written < result.bytes_merged
    assert len(data_files(parquet_dir, "part-")) == 0
    assert len(data_files(parquet_dir, "compact-")) == 12
    assert snapshot(catalog) == before
    assert snapshot(Catalog(parquet_dir)) == before  # a fresh reader, as another process
    # exactly once on disk, not only through the deduplicating views
    for folder, id_field in [("suggestions", "suggestion_id"), ("events", "event_id")]:
        ids = raw_ids(parquet_dir, folder, id_field)
        assert len(ids) == len(set(ids))
    assert len(raw_ids(parquet_dir, "events", "event_id")) == BATCHES * 2 * 2
    assert compacting.stats["compactions"] == 1
    assert compacting.stats["files_compacted"] == 112


def test_when_compacted_then_the_file_keeps_schema_version_and_is_sorted_by_time(compacting, dirs):
    _, parquet_dir = dirs
    compacting.compact(grace_s=0)
    (merged,) = parquet_dir.glob("suggestions/tenant=acme/date=2025-03-10/*.parquet")
    assert merged.name == "compact-00000000000000000001-00000000000000000015.parquet"
    table = pq.read_table(merged)
    assert table.schema.metadata[b"gristmill.schema_version"] == str(SCHEMA_VERSION).encode()
    assert table.schema.metadata[b"gristmill.record_type"] == b"suggestion"
    assert not table.schema.field("suggestion_id").nullable
    assert table.column("created_at").type == pa.timestamp("us", tz="UTC")
    created = table.column("created_at").to_pylist()
    assert created == sorted(created) and len(created) == 8


def test_when_segments_are_still_in_the_log_then_their_files_and_later_ones_are_untouched(dirs):
    log_dir, parquet_dir = dirs
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_interval_s=0)
    store.start()
    try:
        land_batches(store, 4)  # segments 1..4
        store.append([suggestion("late")])  # segment 5, which will be back in the log
        (segment,) = log_dir.glob("*.seg")
        saved = segment.read_bytes()
        store.flush()
        land_batches(store, 6, start=4)  # segments 6..11
        segment.write_bytes(saved)  # as if deleting segment 5 had failed: it may land again
        pending_and_later = {
            p: (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in data_files(parquet_dir, "part-")
            if int(p.stem.split("-")[1]) >= 5
        }
        before = snapshot(store.catalog())

        store.compact(min_files=2, grace_s=0)

        names = {p.name for p in data_files(parquet_dir, "compact-")}
        assert names == {
            "compact-00000000000000000001-00000000000000000003.parquet",  # day one
            "compact-00000000000000000002-00000000000000000004.parquet",  # day two
            "compact-00000000000000000001-00000000000000000004.parquet",  # events of both days
        }
        for path, identity in pending_and_later.items():
            assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, path
        assert snapshot(store.catalog()) == before

        store.flush()  # segment 5 lands again (same files, same rows) and leaves the log
        assert list(log_dir.glob("*.seg")) == []
        store.compact(min_files=2, grace_s=0)
        assert data_files(parquet_dir, "part-") == []
        assert snapshot(store.catalog()) == before
    finally:
        store.close()


def test_when_grace_period_has_not_passed_then_inputs_stay_on_disk_but_out_of_the_views(
    compacting, dirs
):
    _, parquet_dir = dirs
    before = snapshot(compacting.catalog())
    compacting.compact(grace_s=3600)
    inputs = data_files(parquet_dir, "part-")
    assert len(inputs) == 112  # kept for queries that listed them before the swap
    # Superseded inputs are not even opened (not merely deduplicated): garbage changes nothing.
    for path in inputs:
        path.write_bytes(b"not parquet")
    assert snapshot(compacting.catalog()) == before

    result = compacting.compact(grace_s=3600)  # grace not over: nothing deleted
    assert (result.files_deleted, result.files_written) == (0, 0)
    result = compacting.compact(grace_s=0)  # a later run after the grace period
    assert result.files_deleted == len(inputs)
    assert data_files(parquet_dir, "part-") == []
    assert snapshot(compacting.catalog()) == before


def test_when_new_files_arrive_after_a_compaction_then_the_next_run_merges_them_in(
    compacting, dirs
):
    _, parquet_dir = dirs
    compacting.compact(grace_s=3600)
    land_batches(compacting, 8, start=BATCHES)  # segments 17..24
    before = snapshot(compacting.catalog())
    compacting.compact(min_files=2, grace_s=3600)
    partition = parquet_dir / "suggestions" / "tenant=acme" / "date=2025-03-10"
    names = sorted(p.name for p in partition.glob("compact-*.parquet"))
    # the first compact file is itself superseded by the second (kept for the grace period)
    assert names == [
        "compact-00000000000000000001-00000000000000000015.parquet",
        "compact-00000000000000000001-00000000000000000023.parquet",
    ]
    assert snapshot(compacting.catalog()) == before
    compacting.compact(min_files=2, grace_s=0)
    assert [p.name for p in partition.glob("*.parquet")] == [names[1]]
    assert snapshot(compacting.catalog()) == before


def test_when_files_are_below_min_files_then_nothing_is_merged(compacting, dirs):
    _, parquet_dir = dirs
    landed = data_files(parquet_dir)
    result = compacting.compact(min_files=BATCHES + 1)  # no partition has that many
    assert result == CompactionResult()
    assert data_files(parquet_dir) == landed


def test_when_target_bytes_is_small_then_runs_are_split_and_big_files_left_alone(compacting, dirs):
    _, parquet_dir = dirs
    partition = parquet_dir / "suggestions" / "tenant=acme" / "date=2025-03-10"
    sizes = [p.stat().st_size for p in sorted(partition.glob("part-*.parquet"))]
    target = sizes[0] * 4 + sizes[0] // 2  # about four files per run
    before = snapshot(compacting.catalog())
    compacting.compact(min_files=2, target_bytes=target, grace_s=0)
    merged = sorted(partition.glob("compact-*.parquet"))
    assert [p.name for p in merged] == [  # 8 files -> 2 runs of 4
        "compact-00000000000000000001-00000000000000000007.parquet",
        "compact-00000000000000000009-00000000000000000015.parquet",
    ]
    assert snapshot(compacting.catalog()) == before
    # each compact file is now bigger than the target: another run leaves them as they are
    compacting.compact(min_files=2, target_bytes=sizes[0], grace_s=0)
    assert sorted(partition.glob("*.parquet")) == merged


def test_when_a_file_has_another_schema_version_then_it_is_not_merged(compacting, dirs):
    _, parquet_dir = dirs
    partition = parquet_dir / "quarantine" / "tenant=acme" / "date=2025-03-10"
    odd = sorted(partition.glob("part-*.parquet"))[3]
    table = pq.read_table(odd)
    metadata = {**table.schema.metadata, b"gristmill.schema_version": b"2"}
    pq.write_table(table.replace_schema_metadata(metadata), odd)
    before = snapshot(compacting.catalog())
    compacting.compact(min_files=2, grace_s=0)
    assert sorted(p.name for p in partition.glob("*.parquet")) == [
        "compact-00000000000000000001-00000000000000000005.parquet",  # the files before it
        "compact-00000000000000000009-00000000000000000015.parquet",  # the files after it
        odd.name,
    ]
    assert snapshot(compacting.catalog()) == before


def test_when_an_input_cannot_be_read_then_that_partition_is_left_and_the_others_compact(
    compacting, dirs
):
    _, parquet_dir = dirs
    partition = parquet_dir / "events" / "tenant=globex" / "date=2025-03-11"
    victim = sorted(partition.glob("part-*.parquet"))[2]
    victim.write_bytes(victim.read_bytes()[:-20])  # truncated: the footer is gone
    files_before = sorted(partition.iterdir())
    with pytest.raises(CompactionFailed, match=re.escape(str(partition))):
        compacting.compact(grace_s=0)
    assert sorted(partition.iterdir()) == files_before  # no compact file, no temporary
    other = parquet_dir / "events" / "tenant=acme" / "date=2025-03-11"
    assert [p.name for p in other.iterdir()] == [
        "compact-00000000000000000002-00000000000000000016.parquet"
    ]
    assert compacting.stats["compact_errors"] == 1
    assert str(partition) in compacting.stats["last_compact_error"]


def test_when_store_restarts_after_compaction_then_dedup_and_segment_ids_still_hold(landed):
    log_dir, parquet_dir = landed
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_interval_s=0)
    store.start()
    store.compact(grace_s=0)
    store.close()

    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_interval_s=0)
    store.start()
    try:
        assert store.stats["ids_indexed"] == BATCHES * 2 * 4
        store.append([event("acme-s1-shown", "acme-s1", "shown"), suggestion("new")])
        store.flush()
        assert store.stats["duplicates_skipped"] == 1  # known from the compact file
        assert store.catalog().query("SELECT count(*) FROM events").rows == [(64,)]
        (new_part,) = data_files(parquet_dir, "part-")
        assert new_part.name == "part-00000000000000000017.parquet"  # after the merged ones
    finally:
        store.close()


def test_when_a_compaction_was_interrupted_then_start_removes_its_temporary_file(landed):
    log_dir, parquet_dir = landed
    partition = parquet_dir / "events" / "tenant=acme" / "date=2025-03-10"
    stale = partition / ".compact-00000000000000000001-00000000000000000016.parquet.tmp"
    stale.write_bytes(b"PAR1 half written")
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_interval_s=0)
    store.start()
    try:
        assert not stale.exists()
        assert store.catalog().query("SELECT count(*) FROM events").rows == [(64,)]
    finally:
        store.close()


def test_when_superseded_files_outlive_the_grace_period_then_start_deletes_them(landed):
    log_dir, parquet_dir = landed
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_interval_s=0)
    store.start()
    store.compact(grace_s=3600)
    store.close()
    parts = data_files(parquet_dir, "part-")
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_grace_s=3600)
    store.start()  # still within the grace period: kept
    store.close()
    assert data_files(parquet_dir, "part-") == parts
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_grace_s=0)
    store.start()
    try:
        assert data_files(parquet_dir, "part-") == []
        assert store.stats["superseded_deleted"] == len(parts)
        assert store.catalog().query("SELECT count(*) FROM suggestions").rows == [(32,)]
    finally:
        store.close()


def test_when_copying_back_a_superseded_file_then_it_stays_hidden(compacting, dirs, tmp_path):
    """A file that reappears inside a compact file's range (a restore, a lost delete) is hidden."""
    _, parquet_dir = dirs
    partition = parquet_dir / "suggestions" / "tenant=acme" / "date=2025-03-10"
    saved = tmp_path / "saved.parquet"
    shutil.copy2(sorted(partition.glob("part-*.parquet"))[0], saved)
    before = snapshot(compacting.catalog())
    compacting.compact(grace_s=0)
    shutil.copy2(saved, partition / "part-00000000000000000001.parquet")
    assert snapshot(compacting.catalog()) == before


QUERIES = [
    "SELECT count(*), count(DISTINCT suggestion_id), min(created_at) FROM suggestions",
    "SELECT count(*), count(*) FILTER (WHERE orphan) FROM events",
    "SELECT outcome, count(*) FROM feedback GROUP BY ALL ORDER BY ALL",
    "SELECT tenant, count(*) FROM quarantine GROUP BY ALL ORDER BY ALL",
]


def test_when_queries_run_during_compaction_then_none_fails_and_all_see_the_same_rows(landed):
    """Readers in other threads (one with its own Catalog, as another process would) query
    without pause while a compaction swaps files and a later run deletes the superseded ones."""
    store = FeedbackStore(*landed, land_interval_s=3600, compact_interval_s=0)
    store.start()
    expected = [store.catalog().query(sql).rows for sql in QUERIES]
    catalogs = [store.catalog(), Catalog(landed[1])]
    generation = [0]  # bumped by the main thread after each compaction
    finished = [[0] for _ in catalogs]  # the generation each reader last completed a round in
    problems: list[str] = []
    stop = threading.Event()

    def read(catalog: Catalog, done: list[int]) -> None:
        while not stop.is_set():
            started_in = generation[0]
            for sql, rows in zip(QUERIES, expected, strict=True):
                try:
                    got = catalog.query(sql).rows
                except Exception as exc:  # recorded, then asserted on below
                    problems.append(f"{sql}: {exc!r}")
                    continue
                if got != rows:
                    problems.append(f"{sql}: {got} != {rows}")
            done[0] = started_in

    def rounds_done_since(gen: int) -> bool:
        return all(done[0] >= gen for done in finished)

    readers = [
        threading.Thread(target=read, args=(catalog, done))
        for catalog, done in zip(catalogs, finished, strict=True)
    ]
    for reader in readers:
        reader.start()
    try:
        assert _wait_until(lambda: rounds_done_since(0))
        swapped = store.compact(grace_s=3600)  # inputs stay: readers may have listed them
        generation[0] = 1
        # Stand-in for the grace period: every reader has since started a query afresh.
        assert _wait_until(lambda: rounds_done_since(1))
        cleaned = store.compact(grace_s=0)
        generation[0] = 2
        assert _wait_until(lambda: rounds_done_since(2))
    finally:
        stop.set()
        for reader in readers:
            reader.join()
        store.close()
    assert problems == []
    assert (swapped.files_written, swapped.files_deleted) == (12, 0)
    assert cleaned.files_deleted == 112
    assert data_files(landed[1], "part-") == []


def _wait_until(condition, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_when_compact_interval_passes_then_the_lander_thread_compacts(dirs):
    log_dir, parquet_dir = dirs
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=0.02, compact_interval_s=0.05)
    store.start()
    try:
        land_batches(store, 8)  # 8 files in each tenant's day-one events partition
        before = snapshot(store.catalog())
        events = parquet_dir / "events" / "tenant=acme" / "date=2025-03-10"
        merged = events / "compact-00000000000000000001-00000000000000000008.parquet"
        assert _wait_until(merged.exists)
        assert store.stats["compactions"] >= 1
        assert store.stats["files_compacted"] >= 8
        # the inputs wait out the default grace period (they are out of the views already)
        assert len(list(events.glob("part-*.parquet"))) == 8
        assert snapshot(store.catalog()) == before
    finally:
        store.close()


def test_when_compact_interval_is_zero_then_the_lander_thread_never_compacts(dirs):
    log_dir, parquet_dir = dirs
    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=0.01, compact_interval_s=0)
    store.start()
    try:
        land_batches(store, 8)
        time.sleep(0.3)  # many lander rounds
        assert store.stats["compactions"] == 0
        assert data_files(parquet_dir, "compact-") == []
    finally:
        store.close()


def test_when_store_is_not_running_then_compact_is_refused(dirs):
    store = FeedbackStore(*dirs, compact_interval_s=0)
    with pytest.raises(SinkUnavailable, match="not started"):
        store.compact()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_files": 1},  # merging one file into itself is pointless
        {"target_bytes": 0},
        {"grace_s": -1},
    ],
)
def test_when_compact_arguments_are_bad_then_value_error(compacting, kwargs):
    with pytest.raises(ValueError):
        compacting.compact(**kwargs)
