"""Server-side inference: where an insertion stands in a later request (Python and SQL paths)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from feedback_store import (
    FeedbackDB,
    MatchParams,
    QueryError,
    edit_similarity,
    match_later_requests,
    match_later_text,
    normalize_code,
    render_template,
)
from feedback_store.prompts import TEMPLATE_FAMILIES
from tests.trainer.datasets.history import FILE_HEAD

SUFFIX = "\n    return s\n"
ACCEPTED = "s += i.price * i.quantity"
BELOW = "\n    return s\n"

# (name, later prefix, later suffix, accepted, expected method, complete, surviving text,
#  expected similarity, moved)
REPLAYS = [
    # kept: the next request's prefix carries the text unchanged, cursor on a later line
    (
        "kept",
        FILE_HEAD + ACCEPTED + "\n    ret",
        "urn s\n",
        True,
        "exact",
        True,
        ACCEPTED,
        1.0,
        False,
    ),
    # edited: the developer changed the accepted text
    (
        "edited",
        FILE_HEAD + "s += i.price\n    return s\n",
        "",
        True,
        "exact",
        True,
        "s += i.price",
        1 - 13 / 25,
        False,
    ),
    # deleted: the line is gone, the next line of the original suffix follows the anchor
    ("deleted", FILE_HEAD + "\n    return s\n", "", True, "exact", True, "", 0.0, False),
    # re-indented: every line shifted by two spaces; whitespace does not count as an edit
    (
        "reindented",
        FILE_HEAD.replace("\n    ", "\n      ") + "  " + ACCEPTED + "\n",
        "      return s\n",
        True,
        "fuzzy",
        True,
        ACCEPTED,
        1.0,
        False,
    ),
    # moved: the text now stands above the function; the anchor shows other text
    (
        "moved",
        "import math\n\n"
        + ACCEPTED
        + "\n"
        + FILE_HEAD[len("import math\n") :]
        + "pass\n    return s\n",
        "",
        True,
        "exact",
        True,
        "pass",
        None,
        True,
    ),
    # still typing: the later cursor is inside the span, so the observation is incomplete
    (
        "typing",
        FILE_HEAD + "s += i.pr",
        "\n    return s\n",
        True,
        "exact",
        False,
        None,
        None,
        False,
    ),
    # dismissed, then written by hand at the same spot
    (
        "handwritten",
        FILE_HEAD + "s = s + i.cost\n    return s\n",
        "",
        False,
        "exact",
        True,
        "s = s + i.cost",
        None,
        False,
    ),
    # the file window no longer holds the insertion point
    ("gone", "def other():\n    pass\n", "", True, "none", False, None, None, False),
]


@pytest.mark.parametrize(
    "name,later_prefix,later_suffix,accepted,method,complete,text,similarity,moved",
    REPLAYS,
    ids=[r[0] for r in REPLAYS],
)
def test_when_later_request_replayed_then_the_insertion_is_found_as_written(
    name, later_prefix, later_suffix, accepted, method, complete, text, similarity, moved
):
    match = match_later_text(
        FILE_HEAD, SUFFIX, ACCEPTED, later_prefix, later_suffix, accepted=accepted
    )
    assert match.method == method
    assert match.complete is complete
    if complete:
        assert match.text == text
    if similarity is not None:
        assert edit_similarity(match.compare_from, match.compare_to) == pytest.approx(similarity)
    assert match.moved_found is moved


def test_when_suggestion_ends_mid_line_then_rest_of_line_is_not_part_of_the_text():
    prefix = FILE_HEAD + "s += price("
    later = FILE_HEAD + "s += price(i, tax=0.2)\n    return s\n"
    match = match_later_text(prefix, ")\n    return s\n", "i, rate", later, "")
    assert (match.clean, match.text, match.compare_from) == (True, "i, tax=0.2", "i, rate")


def test_when_rest_of_line_changed_then_match_is_not_clean_and_compares_whole_line():
    prefix = FILE_HEAD + "s += price("
    later = FILE_HEAD + "s += price(i) * 2\n    return s\n"
    match = match_later_text(prefix, ")\n    return s\n", "i", later, "")
    assert (match.clean, match.compare_from, match.compare_to) == (False, "i)", "i) * 2")


def test_when_anchor_is_too_short_then_nothing_is_inferred():
    params = MatchParams(min_anchor_chars=12)
    match = match_later_text("x = ", "", "1", "x = 1\n", "", params)
    assert match.found is False


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ("return x", "return x", 1.0),
        ("    return  x\n", "return x", 1.0),  # whitespace-insensitive
        ("abcd", "abce", 0.75),
        ("", "", 1.0),
        ("abc", "", 0.0),
        ("héllo", "hello", 1 - 1 / 5),  # characters, as DuckDB's levenshtein counts
    ],
)
def test_when_similarity_computed_then_python_and_duckdb_agree(tmp_path: Path, a, b, expected):
    assert edit_similarity(a, b) == pytest.approx(expected)
    with FeedbackDB(tmp_path) as db:
        (value,) = db.rows("SELECT gm_similarity($a, $b)", {"a": a, "b": b})[0]
        (norm,) = db.rows("SELECT gm_norm($a)", {"a": a})[0]
        (differs,) = db.rows("SELECT gm_norm_differs($a, $b)", {"a": a, "b": b})[0]
    assert value == pytest.approx(expected)
    assert norm == normalize_code(a)
    assert differs == (normalize_code(a) != normalize_code(b))


@pytest.mark.parametrize(
    "text",
    ["", " \t\r\n\f\v ", "x", "  x\n", "\\t", "\u00a0", "\n\n    return s\n", None],
)
def test_when_blankness_tested_then_gm_blank_agrees_with_the_nonblank_count(tmp_path: Path, text):
    with FeedbackDB(tmp_path) as db:
        (blank, count) = db.rows("SELECT gm_blank($t), gm_nonblank($t)", {"t": text})[0]
    if text is None:
        assert (blank, count) == (None, None)
    else:
        assert blank is (count == 0)
        assert blank is (text.strip(" \t\r\n\f\v") == "")


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [("def f(x):\n    ", "\n    return x\n"), ("a", None), ("", ""), ("é'\x00", "ü"), (None, "x")],
)
def test_when_prompt_rendered_in_sql_then_it_equals_the_served_template(
    tmp_path: Path, prefix, suffix
):
    with FeedbackDB(tmp_path) as db:
        for name in TEMPLATE_FAMILIES:
            params = {"t": name, "p": prefix, "s": suffix}
            (rendered,) = db.rows("SELECT gm_render($t, $p, $s)", params)[0]
            assert rendered == (None if prefix is None else render_template(name, prefix, suffix))
        assert db.rows("SELECT gm_render('no-such-template', 'a', 'b')")[0] == (None,)


def test_when_memory_kept_allocated_then_duckdb_reuses_up_to_the_memory_limit(tmp_path: Path):
    with FeedbackDB(tmp_path, memory_limit="256MiB", keep_allocated=True) as db:
        (kept,) = db.rows("SELECT current_setting('block_allocator_memory')")[0]
        db.execute("CREATE TABLE t AS SELECT range AS i, repeat('x', 100) AS s FROM range(100000)")
        assert db.rows("SELECT count(*), sum(length(s)) FROM t")[0] == (100000, 10_000_000)
    with FeedbackDB(tmp_path, memory_limit="256MiB") as db:
        (default,) = db.rows("SELECT current_setting('block_allocator_memory')")[0]
    assert kept != default
    assert kept.replace(" ", "").startswith("256")


def test_when_memory_kept_without_a_limit_then_the_error_names_the_missing_limit(tmp_path: Path):
    with pytest.raises(QueryError, match="keep_allocated needs a memory_limit"):
        FeedbackDB(tmp_path, keep_allocated=True)


def _matched(db: FeedbackDB) -> dict[int, tuple]:
    """The out table of match_later_requests by key: the SpanMatch fields, then similarity."""
    return {
        r[0]: r[1:]
        for r in db.rows(
            "SELECT k, found, complete, method, text, compare_from, compare_to, clean, "
            "moved_found, similarity FROM out"
        )
    }


def _reference(row: dict, params: MatchParams) -> tuple:
    """match_later_text's answer for a row, as the fields _matched returns (no similarity)."""
    match = match_later_text(
        row["prefix"],
        row["suffix"],
        row["inserted"],
        row["later_prefix"],
        row["later_suffix"],
        params,
        accepted=row["accepted"],
    )
    return (
        match.found,
        match.complete,
        match.method,
        match.text,
        match.compare_from,
        match.compare_to,
        match.clean,
        match.moved_found,
    )


def _check_similarity(got: tuple, expected: tuple) -> None:
    if expected[0]:
        assert got[8] == pytest.approx(edit_similarity(expected[4], expected[5]), abs=1e-12)


def test_when_rows_matched_in_sql_then_results_equal_the_python_matcher(tmp_path: Path):
    rows = []
    for k, (_, later_prefix, later_suffix, accepted, *_rest) in enumerate(REPLAYS):
        rows.append(
            {
                "k": k,
                "prefix": FILE_HEAD,
                "suffix": SUFFIX,
                "inserted": ACCEPTED,
                "later_prefix": later_prefix,
                "later_suffix": later_suffix,
                "accepted": accepted,
            }
        )
    with FeedbackDB(tmp_path) as db:
        table = pa.Table.from_pylist(rows)
        db.con.register("replays_view", table)
        db.execute("CREATE TABLE replays AS SELECT * FROM replays_view")
        match_later_requests(db, "SELECT * FROM replays", [("k", "BIGINT")], "out", MatchParams())
        got = _matched(db)
    assert len(got) == len(rows)
    for row in rows:
        expected = _reference(row, MatchParams())
        assert got[row["k"]][:8] == expected, REPLAYS[row["k"]][0]
        _check_similarity(got[row["k"]], expected)


def _random_rows(seed: int, n: int, params: MatchParams) -> list[dict]:
    """Insertions and later texts built from code-like pieces (tabs, CR, blank lines, non-ASCII
    and astral characters), with the later text often carrying the prefix's tail."""
    import random

    rng = random.Random(seed)
    atoms = [
        "def f(x):",
        "    ",
        "\t",
        "\n",
        "\n\n",
        " ",
        "return x",
        "s += i.price",
        "é",
        "日本",
        "😀",
        "x",
        "(",
        ")",
        "  # c",
        "\r",
        "if a:",
        "pass",
        "    return s",
    ]

    def text(most: int) -> str:
        return "".join(rng.choice(atoms) for _ in range(rng.randint(0, most)))

    rows = []
    for k in range(n):
        prefix, inserted, suffix = text(30), text(6), text(10)
        if rng.random() < 0.6:
            start = rng.randint(0, max(0, len(prefix) - rng.choice([5, 40, 200])))
            later = prefix[start:]
            if rng.random() < 0.4:  # re-indented and reformatted: only a fuzzy anchor finds it
                later = "".join(
                    rng.choice([c, c + " ", "\t" if c == " " else c + "\n"]) if c in " \n" else c
                    for c in later
                )
            later += rng.choice([inserted, text(4), inserted + text(2)]) + text(6)
            later += suffix if rng.random() < 0.5 else text(8)
            cursor = rng.randint(0, len(later))
            later_prefix, later_suffix = later[:cursor], later[cursor:]
        else:
            later_prefix, later_suffix = text(30), text(10)
        rows.append(
            {
                "k": k,
                "prefix": prefix,
                "suffix": suffix,
                "inserted": inserted,
                "later_prefix": later_prefix,
                "later_suffix": later_suffix,
                "accepted": rng.random() < 0.7,
            }
        )
    return rows


FUZZ_PARAMS = [
    MatchParams(),
    MatchParams(
        anchor_chars=8,
        min_anchor_chars=2,
        prefix_tail_chars=40,
        later_prefix_chars=60,
        later_suffix_chars=20,
        suffix_head_chars=12,
        span_slack_chars=3,
        moved_min_chars=2,
        right_anchor_min_chars=1,
    ),
]


def _match_random_rows(
    tmp_path: Path, rows: list[dict], params: MatchParams, native: bool, **options: bool
) -> dict[int, tuple]:
    """match_later_requests over ``rows`` (the compiled matcher needs a C compiler, cc)."""
    from feedback_store import _native

    if native and not _native.available():
        pytest.skip("no C compiler (cc) to build feedback_store/_match.c")
    with FeedbackDB(tmp_path) as db:
        db.con.register("rows_view", pa.Table.from_pylist(rows))
        db.execute("CREATE TABLE rows AS SELECT * FROM rows_view")
        match_later_requests(
            db, "SELECT * FROM rows", [("k", "BIGINT")], "out", params, native=native, **options
        )
        return _matched(db)


@pytest.mark.parametrize("native", [False, True], ids=["sql", "compiled"])
@pytest.mark.parametrize("params", FUZZ_PARAMS, ids=["default", "small-windows"])
def test_when_random_rows_matched_then_each_path_equals_the_python_matcher(
    tmp_path: Path, native: bool, params: MatchParams
) -> None:
    """Every branch (exact, fuzzy, none, moved), all-ASCII rows and rows with other code
    points. The compiled matcher needs a C compiler (cc); the SQL path runs everywhere."""
    rows = _random_rows(7, 1500, params)
    got = _match_random_rows(tmp_path, rows, params, native)
    assert len(got) == len(rows)
    methods = set()
    for row in rows:
        expected = _reference(row, params)
        assert got[row["k"]][:8] == expected, row
        _check_similarity(got[row["k"]], expected)
        methods.add(expected[2])
    assert methods == {"exact", "fuzzy", "none"}  # every branch was exercised
    assert sum(1 for r in got.values() if r[2] == "fuzzy") >= 20
    assert any(r[7] for r in got.values())  # moved


@pytest.mark.parametrize("native", [False, True], ids=["sql", "compiled"])
def test_when_compared_texts_not_kept_then_only_they_differ(tmp_path: Path, native: bool) -> None:
    """compared=False: the compiled matcher leaves compare_from/compare_to null (the similarity
    is known without them); the SQL path needs them for the similarity and keeps them. Every
    other field, similarity included, is the same as with compared=True."""
    params = FUZZ_PARAMS[0]
    rows = _random_rows(11, 1500, params)
    full = _match_random_rows(tmp_path / "full", rows, params, native)
    lean = _match_random_rows(tmp_path / "lean", rows, params, native, compared=False)
    assert full.keys() == lean.keys()
    found = [k for k, r in full.items() if r[0]]
    assert len(found) > 100
    for k, row in full.items():
        assert lean[k][:4] + lean[k][6:] == row[:4] + row[6:]
        if native:
            assert lean[k][4:6] == (None, None)
        else:
            assert lean[k][4:6] == row[4:6]


def test_when_table_arrives_in_uneven_batches_then_native_results_equal_one_batch() -> None:
    """The compiled matcher runs batch by batch on the texts where DuckDB exported them: any
    split (batches of 1, 7 and 1000 rows, and an empty batch) gives the results of one batch.
    Needs a C compiler (cc)."""
    from feedback_store import _native

    if not _native.available():
        pytest.skip("no C compiler (cc) to build feedback_store/_match.c")
    params = FUZZ_PARAMS[0]
    rows = _random_rows(5, 1500, params)
    for row in rows:
        row["prefix_tail"], row["suffix_head"] = row.pop("prefix"), row.pop("suffix")
    whole = pa.Table.from_pylist(rows)
    cuts = [0, 1, 8, 8, 1008, len(rows)]
    batches = [
        whole.slice(a, b - a).combine_chunks().to_batches()[0]
        for a, b in zip(cuts, cuts[1:], strict=False)
        if b > a
    ]
    batches.insert(2, pa.RecordBatch.from_pylist([], schema=whole.schema))
    pieces = pa.Table.from_batches(batches)
    assert pieces.column("inserted").num_chunks >= 4
    one = _native.match(whole, params, 2000)
    split = _native.match(pieces, params, 2000)
    assert split.flags.tolist() == one.flags.tolist()
    assert split.similarity.tolist() == one.similarity.tolist()
    assert (split.flags & _native.FOUND).any() and not (split.flags & _native.FOUND).all()
    for name in ("text", "compare_from", "compare_to"):
        assert getattr(split, name).to_pylist() == getattr(one, name).to_pylist(), name


def test_when_native_matcher_disabled_then_it_is_not_available(monkeypatch) -> None:
    import feedback_store._native as native

    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("GRISTMILL_NATIVE", "0")
    assert not native.available()
    with pytest.raises(RuntimeError, match="not available"):
        native.match(pa.table({"accepted": [True]}), MatchParams(), 2000)
    monkeypatch.setattr(native, "_tried", False)


def test_when_no_c_compiler_then_the_build_says_so_and_matching_uses_sql(
    tmp_path: Path, monkeypatch
) -> None:
    import feedback_store._native as native

    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setenv("GRISTMILL_NATIVE_DIR", str(tmp_path / "native"))
    monkeypatch.setenv("CC", "no-such-cc")
    with pytest.raises(OSError, match="no C compiler \\(no-such-cc\\)"):
        native.build()
    assert not native.available()
    rows = _random_rows(3, 200, MatchParams())
    with FeedbackDB(tmp_path / "store") as db:
        db.con.register("rows_view", pa.Table.from_pylist(rows))
        db.execute("CREATE TABLE rows AS SELECT * FROM rows_view")
        match_later_requests(db, "SELECT * FROM rows", [("k", "BIGINT")], "out", MatchParams())
        got = _matched(db)
    for row in rows:
        assert got[row["k"]][:8] == _reference(row, MatchParams()), row
