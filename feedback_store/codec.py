"""Wire encoding of record batches (orjson).

Datetimes travel as integer microseconds since the Unix epoch (UTC): exact for every Python
datetime, and the Parquet lander hands them to Arrow's ``timestamp[us, UTC]`` columns unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

__all__ = ["decode_batch", "encode_batch", "epoch_us", "from_epoch_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME


def epoch_us(value: datetime) -> int:
    """Timezone-aware datetime -> integer microseconds since the epoch (exact)."""
    return (value - _EPOCH) // _MICROSECOND


def from_epoch_us(value: int) -> datetime:
    """Integer microseconds since the epoch -> UTC datetime (exact)."""
    return _EPOCH + timedelta(microseconds=value)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return epoch_us(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_batch(records: Sequence[Mapping[str, Any]]) -> bytes:
    """Serialise validated records; datetimes must be timezone-aware."""
    return orjson.dumps(list(records), default=_default, option=_OPTIONS)


def decode_batch(payload: bytes) -> list[dict[str, Any]]:
    """Inverse of encode_batch, except that datetimes stay integer microseconds."""
    records = orjson.loads(payload)
    if not isinstance(records, list):
        raise ValueError("batch payload is not a list")
    return records
