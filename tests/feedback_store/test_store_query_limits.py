"""Catalog.query limits: max_rows truncation and a timeout that interrupts DuckDB."""

from __future__ import annotations

import threading

import pytest

from feedback_store import Catalog, QueryError, QueryResult, QueryTimeout
from tests.feedback_store.records import suggestion

# Billions of row pairs: runs for minutes unless interrupted.
SLOW = "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range < 0"


@pytest.fixture
def catalog(store) -> Catalog:
    store.append([suggestion(f"s{i}") for i in range(5)])
    store.flush()
    return store.catalog()


@pytest.mark.parametrize(
    "sql,max_rows,count,truncated",
    [
        ("SELECT * FROM range(10)", 3, 3, True),
        ("SELECT * FROM range(10)", 10, 10, False),  # exactly the limit: nothing cut
        ("SELECT * FROM range(10)", 0, 0, True),
        ("SELECT * FROM range(20000)", 12345, 12345, True),  # cut inside a fetched batch
        ("SELECT * FROM range(20000)", None, 20000, False),  # no limit
        ("SELECT suggestion_id FROM suggestions ORDER BY 1", 2, 2, True),  # over the views
    ],
)
def test_when_result_is_longer_than_max_rows_then_it_is_cut_and_marked_truncated(
    catalog, sql, max_rows, count, truncated
):
    result = catalog.query(sql, max_rows=max_rows)
    assert (len(result.rows), result.truncated) == (count, truncated)
    assert result.rows == catalog.query(sql, max_rows=None).rows[:count]  # the first rows


def test_when_max_rows_not_given_then_at_most_one_hundred_thousand_rows_come_back(catalog):
    result = catalog.query("SELECT range FROM range(250000)")
    assert len(result.rows) == 100_000 and result.truncated
    assert result.rows[-1] == (99_999,)
    assert catalog.query("SELECT range FROM range(100000)").truncated is False


def test_when_result_fits_then_it_equals_the_plain_result(catalog):
    result = catalog.query(
        "SELECT suggestion_id FROM suggestions WHERE tenant = ? ORDER BY 1", ["acme"]
    )
    assert result == QueryResult(
        columns=["suggestion_id"], rows=[(f"s{i}",) for i in range(5)], truncated=False
    )


def test_when_query_runs_past_its_timeout_then_it_is_interrupted_with_query_timeout(catalog):
    with pytest.raises(QueryTimeout, match=r"timed out after 0\.3 s") as caught:
        catalog.query(SLOW, timeout_s=0.3)
    assert isinstance(caught.value, QueryError)  # callers catching QueryError still do
    assert caught.value.http_status == 504
    # the shared database is fine afterwards, and the interrupt does not leak into later queries
    assert catalog.query("SELECT count(*) FROM suggestions", timeout_s=0.3).rows == [(5,)]


def test_when_queries_time_out_in_parallel_then_each_is_interrupted_alone(catalog):
    outcomes: list[str] = []

    def slow() -> None:
        try:
            catalog.query(SLOW, timeout_s=0.5)
        except QueryTimeout:
            outcomes.append("timeout")

    thread = threading.Thread(target=slow)
    thread.start()
    fast = [catalog.query("SELECT count(*) FROM feedback", timeout_s=60).rows for _ in range(20)]
    thread.join()
    assert outcomes == ["timeout"]
    assert fast == [[(5,)]] * 20


def test_when_query_fails_before_its_timeout_then_it_is_a_plain_query_error(catalog):
    with pytest.raises(QueryError) as caught:
        catalog.query("SELECT nope FROM suggestions", timeout_s=30)
    assert not isinstance(caught.value, QueryTimeout)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"max_rows": -1}, "max_rows"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": -2.5}, "timeout_s"),
    ],
)
def test_when_limits_are_bad_then_query_error(catalog, kwargs, message):
    with pytest.raises(QueryError, match=message):
        catalog.query("SELECT 1", **kwargs)
