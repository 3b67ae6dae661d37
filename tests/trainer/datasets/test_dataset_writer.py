"""The set writer's bytes do not depend on how the rows arrive (DuckDB's batches, the slices and
the string views the writer threads take prompts from), only on the rows and the row group size:
snapshots stay reproducible, and the files declare plain strings."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.datasets.build import (
    _NO_DICTIONARY,
    _NO_STATISTICS,
    LINEAGE_SCHEMA,
    SETS,
    _SetWriter,
    _Texts,
)


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["def", "return", "self", "value", "    ", "\n", "x", "(", ")", ":", "if", "é"]
    # Some shorter than a view's inline 12 bytes, most longer.
    return ["".join(rng.choice(words) for _ in range(rng.randint(1, 400))) for _ in range(n)]


def _batched(values: list[str], rng: random.Random) -> pa.ChunkedArray:
    """The values in batches of random sizes, as DuckDB's export returns them."""
    chunks, start = [], 0
    while start < len(values):
        size = rng.randint(1, 700)
        chunks.append(pa.array(values[start : start + size], pa.string()))
        start += size
    return pa.chunked_array(chunks, pa.string())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reference(path: Path, puts: list[pa.Table], group: int) -> None:
    """What the writer must produce: pyarrow's own file of the same string rows, row groups of
    ``group`` rows, each of one chunk (wherever the tables put to the writer began)."""
    schema = puts[0].schema
    rows = pa.concat_tables(puts)
    with pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        compression_level=1,
        use_dictionary=[n for n in schema.names if n not in _NO_DICTIONARY],
        write_statistics=[n for n in schema.names if n not in _NO_STATISTICS],
    ) as writer:
        for start in range(0, rows.num_rows, group):
            part = rows.slice(start, group).combine_chunks()
            writer.write_table(part, row_group_size=part.num_rows)


def test_when_prompts_come_as_views_of_slices_then_the_file_is_pyarrows_own_for_strings(
    tmp_path: Path,
) -> None:
    """Rows from three slices, each slice's prompts exported in random batches and out of
    order, put in tables of uneven sizes (a row group starting inside a table, rests carried
    over into the next slice): byte for byte the file pyarrow writes from the same rows as
    strings, footer schema included, and it reads back as strings."""
    rng = random.Random(3)
    schema = SETS["labels"]
    group = 5000
    writer = _SetWriter(tmp_path / "views.parquet", schema, group)
    puts: list[pa.Table] = []
    slices = [(900, [3000, 1]), (4000, [9000]), (50, [4096, 77])]
    for slice_no, (contexts, sizes) in enumerate(slices):
        texts = _texts(contexts, seed=slice_no)
        # Exported unordered: place i holds context order[i]'s prompt; where[c] finds it.
        order = np.array(rng.sample(range(contexts), contexts))
        where = np.empty(contexts, np.int64)
        where[order] = np.arange(contexts)
        prompts = _Texts(_batched([texts[c] for c in order], rng), where)
        for size in sizes:
            at = np.sort(np.array([rng.randrange(contexts) for _ in range(size)]))
            rows = {
                "prompt": [texts[c] for c in at],
                "completion": [texts[c][-30:] for c in at],
                "label": [rng.random() < 0.5 for _ in at],
            }
            puts.append(pa.table(rows, schema=schema))
            viewed = pa.table(
                {
                    "prompt": prompts.take(at),
                    "completion": pa.array(rows["completion"]),
                    "label": pa.array(rows["label"]),
                }
            )
            writer.write(viewed.cast(writer.arrow_schema))
    writer.close()
    _reference(tmp_path / "strings.parquet", puts, group)
    assert writer.rows == sum(p.num_rows for p in puts)
    assert _digest(tmp_path / "views.parquet") == _digest(tmp_path / "strings.parquet")
    back = pq.read_table(tmp_path / "views.parquet")
    assert back.schema.field("prompt").type == pa.string()
    assert back.column("prompt").to_pylist() == pa.concat_tables(puts).column("prompt").to_pylist()
    # The check can fail: other row group boundaries give other bytes.
    _reference(tmp_path / "other.parquet", puts, 4000)
    assert _digest(tmp_path / "other.parquet") != _digest(tmp_path / "strings.parquet")


def test_when_prompts_taken_then_each_row_gets_its_context_in_the_order_asked() -> None:
    rng = random.Random(5)
    texts = _texts(300, seed=9) + [""]
    order = np.array(rng.sample(range(len(texts)), len(texts)))
    where = np.empty(len(texts), np.int64)
    where[order] = np.arange(len(texts))
    prompts = _Texts(_batched([texts[c] for c in order], rng), where)
    at = np.array([300, 0, 0, 299, 17, 300, 5])
    taken = prompts.take(at)
    assert taken.type == pa.string_view()
    assert taken.to_pylist() == [texts[c] for c in at]
    assert prompts.take(np.array([], np.int64)).to_pylist() == []


def test_when_rows_wait_for_the_next_table_then_they_keep_only_their_own_texts(
    tmp_path: Path,
) -> None:
    """A few rows of a big slice carried over to the next table do not hold the slice's texts
    in memory."""
    texts = ["x" * 1000 + str(i) for i in range(2000)]
    prompts = _Texts(pa.chunked_array([pa.array(texts)]), np.arange(len(texts)))
    writer = _SetWriter(tmp_path / "sft.parquet", SETS["sft"], 5000)
    at = np.array([3, 4, 5])
    table = pa.table({"prompt": prompts.take(at), "completion": pa.array(["a", "b", "c"])})
    held_before = sum(b.size for b in table.column("prompt").chunk(0).buffers() if b is not None)
    writer.write(table.cast(writer.arrow_schema))
    (waiting,) = writer._pending
    held = sum(b.size for c in waiting.column("prompt").chunks for b in c.buffers() if b)
    assert held_before > 1_000_000  # the view points into the whole slice
    assert held < 10_000
    writer.close()
    assert pq.read_table(tmp_path / "sft.parquet").column("prompt").to_pylist() == [
        texts[i] for i in at
    ]


def test_when_a_set_is_written_then_its_texts_carry_no_statistics_and_the_rest_do(
    tmp_path: Path,
) -> None:
    """Min/max of whole code texts help no reader; the label's and the reward's stay."""
    for name in ("labels", "rewards", "pairs"):
        schema = SETS[name]
        writer = _SetWriter(tmp_path / f"{name}.parquet", schema, 100)
        texts = _texts(150, seed=7)
        columns = {
            field.name: (
                texts
                if pa.types.is_string(field.type)
                else [i % 2 == 0 for i in range(150)]
                if pa.types.is_boolean(field.type)
                else [i / 150 for i in range(150)]
            )
            for field in schema
        }
        table = pa.table(columns, schema=schema)
        writer.write(table.cast(writer.arrow_schema))
        writer.close()
        meta = pq.ParquetFile(tmp_path / f"{name}.parquet").metadata
        assert meta.num_row_groups == 2
        for group in range(meta.num_row_groups):
            for index, field in enumerate(schema):
                stats = meta.row_group(group).column(index).statistics
                if field.name in _NO_STATISTICS:
                    assert stats is None, field.name
                else:
                    assert stats is not None and stats.has_min_max, field.name


def test_when_lineage_is_written_then_distinct_values_skip_the_dictionary_and_ids_their_ranges(
    tmp_path: Path,
) -> None:
    """Row numbers, times and similarities are nearly all distinct: a row group's dictionary of
    them never outgrows its page, so it would be built (every value hashed) and kept. Ids and
    hashes carry no min/max (no reader skips a row group by a range of random ids); the
    few-valued columns keep both."""
    rows = 300
    rng = random.Random(3)
    columns: dict[str, list[object]] = {}
    for field in LINEAGE_SCHEMA:
        if field.name == "row":
            columns[field.name] = list(range(rows))
        elif field.name in ("similarity", "elapsed_s", "weight"):
            columns[field.name] = [
                rng.random() if field.name != "weight" else 1.0 for _ in range(rows)
            ]
        elif pa.types.is_timestamp(field.type):
            columns[field.name] = [1_750_000_000_000_000 + 1_000 * i for i in range(rows)]
        elif field.name in ("suggestion_id", "other_suggestion_id", "request_id", "context_hash"):
            columns[field.name] = [f"{rng.getrandbits(128):032x}" for _ in range(rows)]
        else:
            columns[field.name] = [f"{field.name}-{i % 3}" for i in range(rows)]
    table = pa.table(columns).cast(LINEAGE_SCHEMA)
    writer = _SetWriter(tmp_path / "lineage.parquet", LINEAGE_SCHEMA, 100)
    writer.write(table.cast(writer.arrow_schema))
    writer.close()
    meta = pq.ParquetFile(tmp_path / "lineage.parquet").metadata
    assert meta.num_row_groups == 3
    for group in range(meta.num_row_groups):
        for index, field in enumerate(LINEAGE_SCHEMA):
            chunk = meta.row_group(group).column(index)
            dictionary = any("DICTIONARY" in encoding for encoding in chunk.encodings)
            if field.name in ("row", "created_at", "similarity", "elapsed_s"):
                assert not dictionary, field.name
            if field.name in ("tenant", "rule", "language", "set", "split", "weight"):
                assert dictionary, field.name
            stats = chunk.statistics
            if field.name in ("suggestion_id", "other_suggestion_id", "request_id", "context_hash"):
                assert stats is None, field.name
            else:
                assert stats is not None and stats.has_min_max, field.name
    assert pq.read_table(tmp_path / "lineage.parquet").equals(table)
