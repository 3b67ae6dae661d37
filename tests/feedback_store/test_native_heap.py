"""keep_duckdb_heap: DuckDB's malloc_trim import is re-pointed for the block, and only then."""

from __future__ import annotations

import ctypes
import shutil
import threading

import duckdb
import pytest

from feedback_store import _native

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None, reason="no C compiler (cc) to build the native library"
)


def _libc_trim() -> int:
    return ctypes.cast(ctypes.CDLL(None).malloc_trim, ctypes.c_void_p).value


def _noop() -> int:
    lib = _native._load()
    assert lib is not None
    return lib.gm_noop_trim_address()


def test_when_held_then_duckdb_trims_go_to_the_noop_and_come_back_after() -> None:
    duckdb.connect().execute("SELECT 42").fetchall()  # DuckDB has run: its imports are bound
    before = _native.duckdb_trim_target()
    assert before == _libc_trim()
    with _native.keep_duckdb_heap() as held:
        assert held is True
        assert _native.duckdb_trim_target() == _noop()
        # DuckDB works as before inside the hold, idle workers included
        con = duckdb.connect(config={"threads": 2})
        assert con.execute("SELECT sum(range) FROM range(1000000)").fetchone() == (499999500000,)
    assert _native.duckdb_trim_target() == before


def test_when_holds_nest_and_overlap_across_threads_then_the_last_one_out_restores() -> None:
    before = _native.duckdb_trim_target()
    inner_entered, outer_may_leave = threading.Event(), threading.Event()
    seen: list[int | None] = []

    def other() -> None:
        with _native.keep_duckdb_heap():
            inner_entered.set()
            outer_may_leave.wait(10)
        seen.append(_native.duckdb_trim_target())

    with _native.keep_duckdb_heap():
        with _native.keep_duckdb_heap():
            pass
        assert _native.duckdb_trim_target() == _noop()  # the inner block's exit kept it
        worker = threading.Thread(target=other)
        worker.start()
        assert inner_entered.wait(10)
    assert _native.duckdb_trim_target() == _noop()  # the thread's block is still open
    outer_may_leave.set()
    worker.join(10)
    assert seen == [before]
    assert _native.duckdb_trim_target() == before


def test_when_the_module_imports_no_such_function_then_nothing_is_routed() -> None:
    lib = _native._load()
    assert lib is not None
    assert lib.gm_route_import(b"duckdb", b"gm_no_such_function", _noop()) == 0
    assert lib.gm_route_import(b"no-such-library", b"malloc_trim", _noop()) == 0
    assert lib.gm_import_target(b"no-such-library", b"malloc_trim") is None


def test_when_native_is_off_then_nothing_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _native.duckdb_trim_target()
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setenv("GRISTMILL_NATIVE", "0")
    with _native.keep_duckdb_heap() as held:
        assert held is False
        assert _native.duckdb_trim_target() is None
    monkeypatch.undo()
    assert _native.duckdb_trim_target() == before
