"""Hand-made records for the feedback store tests (already redacted, as the gateway sends them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

T0 = datetime(2025, 3, 10, 9, 30, 0, 123456, tzinfo=UTC)


def suggestion(sid: str, *, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "record_type": "suggestion",
        "suggestion_id": sid,
        "request_id": f"req-{sid}",
        "tenant": tenant,
        "team": "payments",
        "repo": "acme/billing",
        "user_hash": "u-7f3a",
        "client_name": "vscode",
        "client_version": "1.2.3",
        "source": "openai",
        "language": "python",
        "file_path": "billing/invoice.py",
        "prefix": "def total(items):\n    ",
        "suffix": "\n",
        "completion": "return sum(i.price for i in items)",
        "choice_index": 0,
        "model_version": "base@1",
        "backend": "embedded",
        "latency_ms": 12.5,
        "created_at": T0,
        "policy_version": "sha256:p1",
        "redaction_counts": {"EMAIL": 1},
        "prompt_template": "fim",
    }
    record.update(fields)
    return record


def event(
    eid: str,
    sid: str,
    type_: str,
    *,
    tenant: str = "acme",
    at: timedelta | None = None,
    **fields: Any,
) -> dict[str, Any]:
    ts = T0 + (at if at is not None else timedelta(seconds=1))
    record: dict[str, Any] = {
        "record_type": "event",
        "event_id": eid,
        "suggestion_id": sid,
        "tenant": tenant,
        "user_hash": "u-7f3a",
        "type": type_,
        "ts": ts,
        "source": "openai",
        "policy_version": "sha256:p1",
        "redaction_counts": {},
        "received_at": ts + timedelta(milliseconds=5),
    }
    record.update(fields)
    return record


def quarantine(qid: str, *, tenant: str = "acme", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "record_type": "quarantine",
        "quarantine_id": qid,
        "record_type_intended": "event",
        "tenant": tenant,
        "suggestion_id": None,
        "event_id": "ev-lost",
        "reason": "redaction_timeout",
        "policy_version": "sha256:p1",
        "ts": T0,
    }
    record.update(fields)
    return record
