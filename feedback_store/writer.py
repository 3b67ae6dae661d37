"""Landing: batches of wire records -> Parquet partitions, exactly once.

Layout: ``<root>/<suggestions|events|quarantine>/tenant=<pct-encoded>/date=<YYYY-MM-DD>/
part-<batch>.parquet``. A batch (a log segment) always lands to the same file names, and each
file is written to a temporary name, fsynced and renamed, so landing a batch again after a crash
rewrites identical files instead of adding rows. Compaction later merges these files
(``compaction.py``); the dedup index reads whatever files are visible (``_layout.py``).
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ._fs import fsync_dir, make_dirs_durable
from ._layout import partitions, scan_partition, split_visible
from .codec import epoch_us
from .compaction import BATCH_ORDER_SQL
from .errors import LandingFailed
from .schemas import RECORD_KINDS, RecordKind

__all__ = ["LandResult", "ParquetLander", "partition_dir"]

_US_PER_DAY = 86_400_000_000
_EPOCH_DAY = date(1970, 1, 1)


@dataclass
class LandResult:
    landed: int = 0
    duplicates: int = 0
    files: list[Path] = field(default_factory=list)


def partition_dir(root: Path, kind: RecordKind, tenant: str, day: date) -> Path:
    # Percent-encoding keeps any tenant name inside one path segment; DuckDB's hive reader
    # decodes it back.
    return root / kind.folder / f"tenant={quote(tenant, safe='')}" / f"date={day.isoformat()}"


def _key(tenant: str, record_id: str) -> str:
    return f"{tenant}\x1f{record_id}"


def _day(value: int | datetime) -> date:
    micros = epoch_us(value) if isinstance(value, datetime) else value
    return _EPOCH_DAY + timedelta(days=micros // _US_PER_DAY)


class ParquetLander:
    """Writes batches as Parquet and remembers landed ids so duplicates land once.

    ``load_seen`` must run before the first ``land`` when the directory already holds data.
    The seen index maps tenant+id to the batch that landed it: landing that same batch again
    (replay after a crash) keeps its rows, any other batch drops them as duplicates.
    """

    def __init__(self, parquet_dir: Path) -> None:
        self._root = Path(parquet_dir)
        self._seen: dict[str, dict[str, str]] = {name: {} for name in RECORD_KINDS}
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self._root

    @staticmethod
    def warm_up() -> None:
        """Pays pyarrow's one-time lazy imports (it loads pandas to convert tz-aware
        datetimes, about half a second) at start-up instead of inside the first landing,
        where that time would stall the serving thread's share of the GIL."""
        stamp = pa.schema([("ts", pa.timestamp("us", tz="UTC"))])
        pa.Table.from_pylist([{"ts": datetime(2000, 1, 1, tzinfo=UTC)}], schema=stamp)

    def seen_count(self) -> int:
        with self._lock:
            return sum(len(ids) for ids in self._seen.values())

    def load_seen(self) -> int:
        """Index every landed id; return the highest numeric batch name found (0 if none).

        Also removes temporary files of landings a crash interrupted (call it before landing).
        """
        self._root.mkdir(parents=True, exist_ok=True)
        highest = 0
        with self._lock:
            for name, kind in RECORD_KINDS.items():
                folder = self._root / kind.folder
                for stale in folder.glob("tenant=*/date=*/.part-*.parquet.tmp"):
                    stale.unlink(missing_ok=True)
                visible: list[str] = []
                for directory in partitions(folder):
                    files = scan_partition(directory, stat=False)
                    # Superseded files count too: their segment ids must never be reused.
                    highest = max([highest, *(f.last for f in files if f.last is not None)])
                    visible.extend(f.full_name for f in split_visible(files)[0])
                if visible:
                    self._seen[name] = self._read_ids(visible, kind)
        return highest

    def land(self, batch: str, records: list[dict[str, Any]]) -> LandResult:
        """Write ``records`` (wire form: validated, timestamps as datetimes or epoch µs)."""
        with self._lock:
            result = LandResult()
            groups: dict[tuple[str, str, date], list[dict[str, Any]]] = defaultdict(list)
            new_keys: dict[str, set[str]] = {name: set() for name in RECORD_KINDS}
            for record in records:
                kind = RECORD_KINDS[record["record_type"]]
                key = _key(record["tenant"], record[kind.id_field])
                fresh = new_keys[kind.record_type]
                landed_by = self._seen[kind.record_type].get(key)
                if key in fresh or (landed_by is not None and landed_by != batch):
                    result.duplicates += 1
                    continue
                fresh.add(key)
                day = _day(record[kind.date_field])
                groups[(kind.record_type, record["tenant"], day)].append(record)
            try:
                directories = set()
                for (record_type, tenant, day), rows in groups.items():
                    path = self._write(RECORD_KINDS[record_type], tenant, day, batch, rows)
                    directories.add(path.parent)
                    result.files.append(path)
                    result.landed += len(rows)
                for directory in directories:
                    fsync_dir(directory)
            except OSError as exc:
                raise LandingFailed(
                    f"landing batch {batch} failed: {exc.strerror}: {exc.filename}"
                ) from exc
            except pa.ArrowException as exc:
                # Type only: Arrow conversion messages can quote record text.
                raise LandingFailed(f"landing batch {batch} failed: {type(exc).__name__}") from exc
            # Only now: a failed landing must not mark its ids as seen, the retry rewrites them.
            for record_type, keys in new_keys.items():
                seen = self._seen[record_type]
                for key in keys:
                    seen.setdefault(key, batch)
            return result

    def _write(
        self, kind: RecordKind, tenant: str, day: date, batch: str, rows: list[dict[str, Any]]
    ) -> Path:
        directory = partition_dir(self._root, kind, tenant, day)
        make_dirs_durable(directory, self._root)
        final = directory / f"part-{batch}.parquet"
        temporary = directory / f".part-{batch}.parquet.tmp"
        table = pa.Table.from_pylist(rows, schema=kind.schema)
        with open(temporary, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        return final

    def _read_ids(self, files: list[str], kind: RecordKind) -> dict[str, str]:
        # The earliest batch that holds an id owns it, as it would have at landing time. Ids
        # from a compact file are owned by its name, which no replayed batch can ever match.
        sql = f"""
            SELECT tenant, "{kind.id_field}", arg_min(
                coalesce(
                    nullif(regexp_extract(filename, '/part-([^/]+)\\.parquet$', 1), ''),
                    regexp_extract(filename, '([^/]+)\\.parquet$', 1)
                ),
                {BATCH_ORDER_SQL} || '/' || filename
            )
            FROM read_parquet($files, filename = true, hive_partitioning = false)
            GROUP BY ALL
        """
        con = duckdb.connect(":memory:")
        try:
            rows = con.execute(sql, {"files": files}).fetchall()
        except duckdb.Error as exc:
            raise LandingFailed(f"cannot index landed {kind.folder}: {exc}") from exc
        finally:
            con.close()
        return {_key(tenant, record_id): batch for tenant, record_id, batch in rows}
