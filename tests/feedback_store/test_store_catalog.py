"""The DuckDB catalog: views, orphans, feedback outcomes, acceptance analytics, read-only SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from feedback_store import (
    EVENT_SCHEMA,
    SUGGESTION_SCHEMA,
    Catalog,
    FeedbackStore,
    QueryError,
    QueryForbidden,
)
from tests.feedback_store.records import T0, event, suggestion

DAY = timedelta(days=1)
OUTCOME_COLUMNS = [
    "shown",
    "accepted",
    "rejected",
    "edited",
    "survived",
    "accept_kind",
    "accepted_text",
    "final_text",
    "last_event_at",
    "accepted_chars",
    "outcome",
]


def _history() -> list[dict]:
    """Two tenants, two models, three days; the expected numbers are worked out per test."""

    def sug(sid, model, language, client, day, tenant="acme"):
        return suggestion(
            sid,
            tenant=tenant,
            model_version=model,
            language=language,
            client_name=client,
            created_at=T0 + day * DAY,
            completion="abcdefghij",  # 10 characters
        )

    def ev(eid, sid, type_, seconds, tenant="acme", day=0, **fields):
        return event(
            eid, sid, type_, tenant=tenant, at=day * DAY + timedelta(seconds=seconds), **fields
        )

    return [
        sug("s1", "m1", "python", "vscode", 0),
        ev("s1-a", "s1", "shown", 1),
        ev("s1-b", "s1", "accepted", 2, accept_kind="full"),  # no text: counts len(completion)
        sug("s2", "m1", "python", "vscode", 0),
        ev("s2-a", "s2", "shown", 1),
        ev("s2-a", "s2", "shown", 1),  # client retry: same event id
        ev("s2-b", "s2", "rejected", 3),
        sug("s3", "m1", "go", "jetbrains", 1),
        ev(
            "s3-a", "s3", "accepted", 2, day=1, accept_kind="line", accepted_text="abcd"
        ),  # no shown
        sug("s4", "m2", "python", "jetbrains", 1),
        ev("s4-a", "s4", "shown", 1, day=1),
        sug("s5", "m2", None, None, 2),  # served, never shown
        sug("s6", "m2", "python", "vscode", 2),
        ev("s6-a", "s6", "shown", 1, day=2),
        ev("s6-b", "s6", "accepted", 2, day=2, accept_kind="line", accepted_text="xy"),
        ev("s6-c", "s6", "accepted", 3, day=2, accept_kind="word", accepted_text="zzz"),
        ev("s6-d", "s6", "edited", 40, day=2, final_text="xyzzz!"),
        ev("ghost-a", "ghost", "accepted", 5, accept_kind="full"),  # orphan: no suggestion
        sug("g1", "m1", "python", "vscode", 0, tenant="globex"),
        ev(
            "g1-a", "g1", "accepted", 2, tenant="globex", accept_kind="word", accepted_text="x" * 13
        ),
    ]


@pytest.fixture
def history(store: FeedbackStore) -> Catalog:
    records = _history()
    store.append(records[:9])
    store.flush()
    store.append(records[9:])  # a second segment
    store.flush()
    return store.catalog()


@pytest.mark.parametrize(
    "group_by,expected",
    [
        (
            "model_version",
            [("m1", 3, 2, 2 / 3, 14), ("m2", 2, 1, 0.5, 5)],
        ),
        (
            "language",
            [("go", 1, 1, 1.0, 4), ("python", 4, 2, 0.5, 15), ("unknown", 0, 0, 0.0, 0)],
        ),
        (
            "client",
            [("jetbrains", 2, 1, 0.5, 4), ("unknown", 0, 0, 0.0, 0), ("vscode", 3, 2, 2 / 3, 15)],
        ),
        (
            "day",
            [
                ("2025-03-10", 2, 1, 0.5, 10),
                ("2025-03-11", 2, 1, 0.5, 4),
                ("2025-03-12", 1, 1, 1.0, 5),
            ],
        ),
    ],
)
def test_when_acceptance_grouped_then_counts_match_the_hand_made_history(
    history, group_by, expected
):
    rows = history.acceptance("acme", group_by)
    got = [(r["group"], r["shown"], r["accepted"], r["accepted_chars"]) for r in rows]
    assert got == [(group, shown, accepted, chars) for group, shown, accepted, _, chars in expected]
    assert [r["acceptance_rate"] for r in rows] == pytest.approx([e[3] for e in expected])
    assert all(type(r["shown"]) is int and type(r["accepted_chars"]) is int for r in rows)


def test_when_acceptance_asked_for_one_tenant_then_other_tenants_are_not_counted(history):
    assert history.acceptance("globex", "model_version") == [
        {"group": "m1", "shown": 1, "accepted": 1, "acceptance_rate": 1.0, "accepted_chars": 13}
    ]
    assert history.acceptance("initech", "model_version") == []


def test_when_acceptance_bounded_by_time_then_only_suggestions_created_in_range_count(history):
    day2 = datetime(2025, 3, 11, tzinfo=UTC)
    rows = history.acceptance("acme", "model_version", since=day2, until=day2 + DAY)
    assert rows == [
        {"group": "m1", "shown": 1, "accepted": 1, "acceptance_rate": 1.0, "accepted_chars": 4},
        {"group": "m2", "shown": 1, "accepted": 0, "acceptance_rate": 0.0, "accepted_chars": 0},
    ]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"group_by": "user"}, "group_by"),
        ({"group_by": "day", "since": datetime(2025, 3, 11)}, "timezone-aware"),  # naive
    ],
)
def test_when_acceptance_arguments_are_bad_then_query_error(history, kwargs, message):
    with pytest.raises(QueryError, match=message):
        history.acceptance("acme", **kwargs)


def test_when_feedback_viewed_then_each_suggestion_has_its_outcome(history):
    result = history.query(
        "SELECT suggestion_id, shown, accepted, rejected, edited, accept_kind, accepted_text,"
        " final_text, last_event_at, accepted_chars, outcome FROM feedback"
        " WHERE tenant = ? ORDER BY suggestion_id",
        ["acme"],
    )
    at = lambda day, seconds: T0 + day * DAY + timedelta(seconds=seconds)  # noqa: E731
    assert result.rows == [
        ("s1", True, True, False, False, "full", None, None, at(0, 2), 10, "accepted"),
        ("s2", True, False, True, False, None, None, None, at(0, 3), 0, "rejected"),
        ("s3", True, True, False, False, "line", "abcd", None, at(1, 2), 4, "accepted"),
        ("s4", True, False, False, False, None, None, None, at(1, 1), 0, "shown"),
        ("s5", False, False, False, False, None, None, None, None, 0, "served"),
        ("s6", True, True, False, True, "word", "zzz", "xyzzz!", at(2, 40), 5, "accepted"),
    ]


def test_when_event_has_no_suggestion_then_it_is_kept_and_flagged_orphan(history, store):
    rows = history.query("SELECT event_id FROM events WHERE orphan").rows
    assert rows == [("ghost-a",)]
    assert history.query("SELECT count(*) FROM events").rows == [(12,)]  # orphans are kept
    # the suggestion arrives late: the same event is no longer an orphan
    store.append([suggestion("ghost")])
    store.flush()
    assert store.catalog().query("SELECT count(*) FROM events WHERE orphan").rows == [(0,)]


def test_when_no_files_exist_then_views_exist_with_the_right_columns_and_no_rows(tmp_path: Path):
    catalog = Catalog(tmp_path / "nothing-landed-yet")
    suggestion_columns = [f.name for f in SUGGESTION_SCHEMA]
    expected = {
        "suggestions": suggestion_columns,
        "events": [f.name for f in EVENT_SCHEMA] + ["orphan"],
        "quarantine": [
            "quarantine_id",
            "record_type_intended",
            "tenant",
            "suggestion_id",
            "event_id",
            "reason",
            "policy_version",
            "ts",
        ],
        "feedback": suggestion_columns + OUTCOME_COLUMNS,
    }
    for view, columns in expected.items():
        result = catalog.query(f"SELECT * FROM {view}")
        assert (result.columns, result.rows) == (columns, []), view
    assert catalog.acceptance("acme", "day") == []


def test_when_files_exist_then_view_column_types_match_the_empty_views(history, tmp_path):
    empty = Catalog(tmp_path / "empty")
    for view in ("suggestions", "events", "quarantine", "feedback"):
        landed = history.query(f"DESCRIBE {view}").rows
        assert [r[:2] for r in landed] == [r[:2] for r in empty.query(f"DESCRIBE {view}").rows]
    types = dict(r[:2] for r in history.query("DESCRIBE suggestions").rows)
    assert types["created_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["redaction_counts"] == "MAP(VARCHAR, INTEGER)"


FORBIDDEN = [
    "COPY (SELECT * FROM suggestions) TO '{root}/out.csv'",
    "CREATE TABLE t AS SELECT * FROM suggestions",
    "INSERT INTO suggestions SELECT * FROM suggestions",
    "ATTACH '{root}/other.duckdb' AS other",
    "EXPLAIN ANALYZE CREATE TABLE t (a INTEGER)",  # EXPLAIN ANALYZE runs its statement
    "SELECT 1; DROP VIEW suggestions",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "INSTALL httpfs",
    "SELECT * FROM read_csv('/etc/passwd')",  # outside the Parquet directory
]


@pytest.mark.parametrize("sql", FORBIDDEN)
def test_when_statement_is_not_read_only_then_query_forbidden(history, dirs, sql):
    _, parquet_dir = dirs
    with pytest.raises(QueryForbidden):
        history.query(sql.format(root=parquet_dir))
    assert not (parquet_dir / "out.csv").exists()
    assert not (parquet_dir / "other.duckdb").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "WITH t AS (SELECT tenant FROM suggestions) SELECT count(*) FROM t",
        "EXPLAIN SELECT * FROM feedback",
        "DESCRIBE events",
        "FROM quarantine",
    ],
)
def test_when_statement_only_reads_then_it_runs(history, sql):
    result = history.query(sql)
    assert result.columns


@pytest.mark.parametrize(
    "sql,params",
    [
        ("SELEC 1", None),  # syntax
        ("SELECT nope FROM suggestions", None),  # binder
        ("SELECT ?", None),  # missing parameter
        ("SELECT 1; SELECT 2", None),  # one statement per query
        ("", None),
    ],
)
def test_when_duckdb_refuses_the_query_then_query_error_with_its_message(history, sql, params):
    with pytest.raises(QueryError) as caught:
        history.query(sql, params)
    assert not isinstance(caught.value, QueryForbidden)
    assert str(caught.value)


def test_when_params_given_then_they_are_bound(history):
    result = history.query(
        "SELECT suggestion_id FROM suggestions WHERE tenant = ? AND model_version = ? ORDER BY 1",
        ["acme", "m2"],
    )
    assert result == type(result)(columns=["suggestion_id"], rows=[("s4",), ("s5",), ("s6",)])


def test_when_first_files_land_after_a_query_then_the_same_catalog_sees_them(store):
    catalog = store.catalog()
    assert catalog.query("SELECT count(*) FROM feedback").rows == [(0,)]
    store.append([suggestion("s1"), event("e1", "s1", "shown")])
    store.flush()
    assert catalog.query("SELECT outcome FROM feedback").rows == [("shown",)]
    assert catalog.query("SELECT count(*) FROM events WHERE NOT orphan").rows == [(1,)]
