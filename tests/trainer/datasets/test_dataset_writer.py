"""The set writer's bytes do not depend on how the rows arrive (DuckDB's batches, the pieces
the writer threads copy), only on the rows: snapshots stay reproducible."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pyarrow as pa

from trainer.datasets.build import _PIECE_ROWS, SETS, _contiguous, _cuts, _SetWriter


def _rows(n: int, seed: int) -> pa.Table:
    rng = random.Random(seed)
    words = ["def", "return", "self", "value", "    ", "\n", "x", "(", ")", ":", "if", "for"]
    texts = ["".join(rng.choice(words) for _ in range(rng.randint(20, 400))) for _ in range(n)]
    return pa.table(
        {
            "prompt": texts,
            "completion": [t[-30:] for t in texts],
            "label": [rng.random() < 0.5 for _ in range(n)],
        }
    )


def _chunked(table: pa.Table, rng: random.Random) -> pa.Table:
    """The same rows in batches of random sizes, as a query might return them."""
    batches, start = [], 0
    while start < table.num_rows:
        size = rng.randint(1, 3000)
        batches.extend(table.slice(start, size).combine_chunks().to_batches())
        start += size
    return pa.Table.from_batches(batches, table.schema)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_when_cuts_taken_then_they_fall_on_row_groups_and_every_piece_from_a_start() -> None:
    p = _PIECE_ROWS
    assert p % 1024 == 0  # the Parquet writer's batch
    n = 2 * p + 1000
    assert _cuts(0, n, 20_000) == [0, p, 2 * p, n]
    # Rows 19,000.. of a file: a row group starts at offset 1,000, and pieces count from there.
    assert _cuts(19_000, n, 20_000) == [0, 1000, 1000 + p, n]
    assert _cuts(20_000, 0, 20_000) == [0]
    assert _cuts(7, 3, 2) == [0, 1, 3]


def test_when_rows_arrive_in_any_batches_then_the_file_bytes_are_the_same(tmp_path: Path) -> None:
    """Whole tables written contiguously, and the same rows in random batches, prompts cut into
    pieces as the write does and the other columns made contiguous: byte-identical files
    (several pages per row group, row groups that start inside a written table, a rest carried
    over)."""
    rng = random.Random(3)
    schema = SETS["labels"]
    rows = _rows(23_000, seed=1)
    sizes = [3000, 1, 9000, 4096, 5903]
    group = 5000
    plain = _SetWriter(tmp_path / "plain.parquet", schema, group)
    pieced = _SetWriter(tmp_path / "pieced.parquet", schema, group)
    base = 0
    for size in sizes:
        table = rows.slice(base, size)
        plain.write(table.combine_chunks())
        cuts = _cuts(base, size, group)
        bounds = list(zip(cuts, cuts[1:], strict=False))
        arriving = _chunked(table, rng)
        assert arriving.column("prompt").num_chunks > 1 or size == 1
        prompts = arriving.column("prompt")
        pieces = [prompts.slice(a, b - a).combine_chunks() for a, b in bounds]
        pieced.write(
            _contiguous(arriving.set_column(0, "prompt", pa.chunked_array(pieces, pa.string())))
        )
        base += size
    plain.close()
    pieced.close()
    assert pieced.rows == plain.rows == sum(sizes)
    assert _digest(tmp_path / "pieced.parquet") == _digest(tmp_path / "plain.parquet")
    # The check can fail: pieces cut off the 1,024-row batches give other bytes.
    other = _SetWriter(tmp_path / "other.parquet", schema, group)
    for start in range(0, rows.num_rows, 1500):
        other.write(_chunked(rows.slice(start, 1500), rng))
    other.close()
    assert _digest(tmp_path / "other.parquet") != _digest(tmp_path / "plain.parquet")
