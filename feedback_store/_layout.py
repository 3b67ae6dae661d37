"""Data file names inside a partition, and which files readers see.

A partition (``<kind>/tenant=<t>/date=<d>/``) holds:

- ``part-<segment>.parquet``: one landing of one log segment (20-digit id);
- ``compact-<first>-<last>.parquet``: the merge of every data file whose segment range lies in
  [first, last];
- dot-files: temporaries of an unfinished landing or compaction, never read.

Visibility rule: a data file is hidden when a compact file in the same partition covers its
range. Renaming a compact file into place is therefore the single atomic step that swaps its
inputs out of every listing made afterwards; its inputs stay on disk (hidden) until a later
compaction run deletes them, so queries that listed them earlier can still open them.
Readers and the dedup index use the visible files only.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DataFile",
    "compact_name",
    "partitions",
    "scan_partition",
    "split_visible",
    "visible_files",
]

PART_PREFIX = "part-"
COMPACT_PREFIX = "compact-"
SUFFIX = ".parquet"
SEGMENT_DIGITS = 20


@dataclass(frozen=True)
class DataFile:
    directory: str
    name: str
    # Segment id range; None for files not named after segments (kept visible, never merged).
    first: int | None
    last: int | None
    size: int = 0  # size and mtime only when scanned with stat=True
    mtime: float = 0.0

    @property
    def path(self) -> Path:
        return Path(self.directory, self.name)

    @property
    def full_name(self) -> str:
        return os.path.join(self.directory, self.name)

    @property
    def compacted(self) -> bool:
        return self.name.startswith(COMPACT_PREFIX)


def compact_name(first: int, last: int) -> str:
    return f"{COMPACT_PREFIX}{first:0{SEGMENT_DIGITS}d}-{last:0{SEGMENT_DIGITS}d}{SUFFIX}"


def segment_range(name: str) -> tuple[int, int] | None:
    """The segment ids a data file name covers (None when the name holds no ids)."""
    stem = name[: -len(SUFFIX)]
    if stem.startswith(PART_PREFIX):
        batch = stem[len(PART_PREFIX) :]
        return (int(batch), int(batch)) if batch.isdigit() else None
    if stem.startswith(COMPACT_PREFIX):
        first, dash, last = stem[len(COMPACT_PREFIX) :].partition("-")
        if dash and first.isdigit() and last.isdigit() and int(first) <= int(last):
            return int(first), int(last)
    return None


def scan_partition(directory: Path, *, stat: bool = True) -> list[DataFile]:
    """Every data file of one partition (temporaries and other entries skipped).

    Readers pass ``stat=False``: they need names only, and partitions hold thousands of files.
    """
    found = []
    folder = str(directory)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if name.startswith(".") or not name.endswith(SUFFIX):
            continue
        ids = segment_range(name)
        first, last = ids if ids is not None else (None, None)
        if not stat:
            found.append(DataFile(folder, name, first, last))
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted (a superseded input) since the directory was read
            continue
        found.append(DataFile(folder, name, first, last, info.st_size, info.st_mtime))
    return found


def split_visible(files: list[DataFile]) -> tuple[list[DataFile], list[tuple[DataFile, DataFile]]]:
    """(visible files sorted by range, [(hidden file, the compact file that covers it)])."""
    ranged = [(f.first, f.last, f) for f in files if f.first is not None and f.last is not None]
    ranged.sort(key=lambda item: (item[0], -item[1]))  # an outer range before those inside it
    # Outermost compact files: a compact file inside another one is itself superseded.
    covers: list[tuple[int, int, DataFile]] = []
    for first, last, f in ranged:
        if f.compacted and not (covers and last <= covers[-1][1]):
            covers.append((first, last, f))
    starts = [first for first, _, _ in covers]
    visible = [f for f in files if f.first is None]
    hidden = []
    for first, last, f in ranged:
        i = bisect.bisect_right(starts, first) - 1
        if i >= 0 and covers[i][2] is not f and last <= covers[i][1]:
            hidden.append((f, covers[i][2]))
        else:
            visible.append(f)
    visible.sort(key=lambda f: (f.first is not None, f.first or 0, f.name))
    return visible, hidden


def partitions(folder: Path) -> Iterator[Path]:
    """Partition directories (``tenant=*/date=*``) of one record kind's folder."""
    for tenant in sorted(folder.glob("tenant=*")):
        for day in sorted(tenant.glob("date=*")):
            if day.is_dir():
                yield day


def visible_files(folder: Path) -> list[str]:
    """The data files readers use, over every partition of one record kind's folder."""
    out: list[str] = []
    for directory in partitions(folder):
        visible, _ = split_visible(scan_partition(directory, stat=False))
        out.extend(f.full_name for f in visible)
    return out
