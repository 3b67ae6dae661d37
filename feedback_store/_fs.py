"""Small durable-filesystem helpers shared by the log and the Parquet lander."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(path: Path, root: Path) -> None:
    """Create ``path`` (under ``root``) and fsync each parent whose entries changed."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != root:
        missing.append(current)
        current = current.parent
    if not missing:
        return
    path.mkdir(parents=True, exist_ok=True)
    for created in reversed(missing):
        fsync_dir(created.parent)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
