"""Dataset errors. Each knows the HTTP status the gateway answers with.

TrainerError (500)                  trainer.errors
└── DatasetError (500)
    ├── RulesInvalid (422)          signals.yaml is unreadable or breaks its schema (``errors``)
    ├── BuildInvalid (422)          a build argument is out of range (e.g. since >= until)
    ├── SnapshotNotFound (404)      no snapshot with that id
    ├── SnapshotCorrupt (500)       a snapshot's card is unreadable or its files do not match
    └── BuildFailed (500)           DuckDB or the file system failed during a build
"""

from __future__ import annotations

from typing import Any

from trainer.errors import TrainerError

__all__ = [
    "BuildFailed",
    "BuildInvalid",
    "DatasetError",
    "RulesInvalid",
    "SnapshotCorrupt",
    "SnapshotNotFound",
]


class DatasetError(TrainerError):
    title = "Dataset error"


class RulesInvalid(DatasetError):
    """``errors`` lists every problem as {loc, line, msg}."""

    http_status = 422
    title = "Invalid signal rules"

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.errors = errors or []


class BuildInvalid(DatasetError):
    http_status = 422
    title = "Invalid dataset build"


class SnapshotNotFound(DatasetError):
    http_status = 404
    title = "No such dataset snapshot"


class SnapshotCorrupt(DatasetError):
    title = "Unreadable dataset snapshot"


class BuildFailed(DatasetError):
    title = "Dataset build failed"
