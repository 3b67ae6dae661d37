"""Compaction crash safety with real processes: SIGKILL at each step of a compaction."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from feedback_store import Catalog, FeedbackStore
from tests.feedback_store.test_store_compaction import (
    BATCHES,
    data_files,
    land_batches,
    raw_ids,
    snapshot,
)

ROOT = Path(__file__).resolve().parents[2]

# Compacts everything (inputs deleted at once) and kills itself with SIGKILL right after the
# named step: no finally blocks, no cleanup, like a power cut or the OOM killer.
_COMPACTOR = """
import os, signal, sys
from pathlib import Path
from feedback_store import FeedbackStore

log_dir, parquet_dir, crash_step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_interval_s=0)
store.start()

def crash(step, path):
    if step == crash_step:
        print(step, path.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

store._compactor.on_step = crash  # the crash-test seam of the compactor
store.compact(min_files=2, grace_s=0)
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("template")
    store = FeedbackStore(root / "log", root / "parquet", land_interval_s=3600)
    store.start()
    land_batches(store, BATCHES)
    expected = snapshot(store.catalog())
    store.close()
    return root, expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "step,leftover",
    [
        ("writing", ".compact-"),  # half-written temporary file
        ("written", ".compact-"),  # complete temporary file, not yet renamed
        ("committed", "compact-"),  # compact file in place, every input still there
        ("deleted", "date="),  # inputs of one partition deleted, the others still to go
    ],
)
def test_when_compaction_is_killed_at_a_step_then_no_row_is_lost_or_duplicated(
    template, dirs, tmp_path, step, leftover
):
    root, expected = template
    log_dir, parquet_dir = dirs
    shutil.copytree(root / "log", log_dir)
    shutil.copytree(root / "parquet", parquet_dir)

    child = subprocess.run(
        [sys.executable, "-c", _COMPACTOR, str(log_dir), str(parquet_dir), step],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    said, name = child.stdout.split()
    assert said == step and name.startswith(leftover)

    # A reader looking at the crashed state, before any recovery, already sees each row once.
    assert snapshot(Catalog(parquet_dir)) == expected

    store = FeedbackStore(log_dir, parquet_dir, land_interval_s=3600, compact_interval_s=0)
    store.start()  # removes temporaries of the killed run
    try:
        assert list(parquet_dir.rglob(".compact-*")) == []
        assert snapshot(store.catalog()) == expected
        store.compact(min_files=2, grace_s=0)  # finishes the job, deleting what it superseded
        assert snapshot(store.catalog()) == expected
    finally:
        store.close()
    assert data_files(parquet_dir, "part-") == []
    for folder, id_field in [("suggestions", "suggestion_id"), ("events", "event_id")]:
        ids = raw_ids(parquet_dir, folder, id_field)
        assert len(ids) == len(set(ids))  # on disk, not only through the views
    assert len(raw_ids(parquet_dir, "quarantine", "quarantine_id")) == BATCHES * 2
