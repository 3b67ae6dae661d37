"""Fixtures for the feedback store tests: a started store on temporary directories."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from feedback_store import FeedbackStore


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "log", tmp_path / "parquet"


@pytest.fixture
def store(dirs: tuple[Path, Path]) -> Iterator[FeedbackStore]:
    # A long interval keeps the lander thread out of the way; tests land with flush().
    s = FeedbackStore(*dirs, land_interval_s=3600)
    s.start()
    yield s
    s.close()
