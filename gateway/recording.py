"""Building raw records for what the gateway served and what clients reported."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.auth import Principal
from gateway.backends import CompletionResult
from gateway.ingest import RawRecord

# A random per-process stem plus a counter: unique across processes and restarts without a
# getrandom() syscall per request (ids are identifiers, not secrets: events are authenticated).
_STEM = secrets.token_hex(8)
_COUNTER = itertools.count(1)


def new_request_id(prefix: str = "cmpl") -> str:
    return f"{prefix}-{_STEM}{next(_COUNTER):08x}"


def suggestion_id(request_id: str, index: int) -> str:
    """Tabby's events name (completion_id, choice_index); we join the two."""
    return f"{request_id}-{index}"


@dataclass(slots=True)
class ServedContext:
    """What the client says about the request besides the text; never used for identity."""

    source: str
    client_name: str | None = None
    client_version: str | None = None
    language: str | None = None
    file_path: str | None = None
    repo: str | None = None
    team: str | None = None
    prompt_template: str | None = None


def client_from_user_agent(user_agent: str | None) -> tuple[str | None, str | None]:
    if not user_agent:
        return None, None
    first = user_agent.split()[0][:100]
    name, _, version = first.partition("/")
    return name or None, version or None


def served_records(
    principal: Principal,
    ctx: ServedContext,
    request_id: str,
    prefix: str,
    suffix: str | None,
    result: CompletionResult,
    backend: str,
    latency_ms: float,
) -> list[RawRecord]:
    created_at = datetime.now(UTC)
    return [
        RawRecord(
            record_type="suggestion",
            tenant=principal.tenant,
            meta={
                "suggestion_id": suggestion_id(request_id, choice.index),
                "request_id": request_id,
                "tenant": principal.tenant,
                "team": ctx.team,
                "user_hash": principal.user_hash,
                "client_name": ctx.client_name,
                "client_version": ctx.client_version,
                "source": ctx.source,
                "language": ctx.language,
                "choice_index": choice.index,
                "model_version": result.model_version,
                "backend": backend,
                "latency_ms": latency_ms,
                "created_at": created_at,
                "prompt_template": ctx.prompt_template,
            },
            texts={
                "prefix": prefix,
                "suffix": suffix,
                "completion": choice.text,
                "file_path": ctx.file_path,
                "repo": ctx.repo,
            },
            file_path=ctx.file_path,
            repo=ctx.repo,
        )
        for choice in result.choices
    ]


def event_record(
    principal: Principal,
    *,
    event_id: str,
    suggestion_id: str,
    type: str,
    source: str,
    ts: datetime | None = None,
    accept_kind: str | None = None,
    accepted_text: str | None = None,
    final_text: str | None = None,
    elapsed_ms: float | None = None,
    window_s: float | None = None,
    client_name: str | None = None,
    file_path: str | None = None,
    repo: str | None = None,
) -> RawRecord:
    now = datetime.now(UTC)
    return RawRecord(
        record_type="event",
        tenant=principal.tenant,
        meta={
            "event_id": event_id,
            "suggestion_id": suggestion_id,
            "tenant": principal.tenant,
            "user_hash": principal.user_hash,
            "type": type,
            "ts": ts or now,
            "accept_kind": accept_kind,
            "elapsed_ms": elapsed_ms,
            "window_s": window_s,
            "client_name": client_name,
            "source": source,
            "received_at": now,
        },
        texts={"accepted_text": accepted_text, "final_text": final_text},
        file_path=file_path,
        repo=repo,
    )
