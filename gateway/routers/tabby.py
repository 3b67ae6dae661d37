"""Tabby-compatible API under /tabby, for Tabby's IDE extensions (the npm tabby-agent).

Point the extension's endpoint at http://HOST:PORT/tabby with a Gristmill token.
"""

from __future__ import annotations

import hashlib
import time
from typing import Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from gateway import __version__
from gateway.auth import Principal
from gateway.backends import CompletionRequest
from gateway.deps import BackendDep, Developer, IngestorDep, RuntimeDep, SettingsDep
from gateway.errors import BadRequest
from gateway.recording import (
    ServedContext,
    client_from_user_agent,
    event_record,
    new_request_id,
    served_records,
    suggestion_id,
)
from gateway.runtime import Runtime

router = APIRouter(prefix="/tabby", tags=["tabby"])

# The Tabby server API level these routes implement, reported in HealthState.version. The
# tabby-agent reads it with semver: below 0.9.0 it never fetches /v1beta/server_setting, so it
# would not learn that its own usage reports to app.tabbyml.com must stay off.
TABBY_API_VERSION = "0.11.1"

# Context we prepend to the prefix as comments, bounded so the prompt stays small.
_MAX_CONTEXT_CHARS = 2000
_LINE_COMMENT = {
    "python": "#",
    "ruby": "#",
    "shellscript": "#",
    "bash": "#",
    "yaml": "#",
    "toml": "#",
    "r": "#",
    "perl": "#",
    "dockerfile": "#",
    "sql": "--",
    "lua": "--",
    "haskell": "--",
}


class Snippet(BaseModel):
    model_config = ConfigDict(extra="ignore")
    filepath: str = Field(max_length=4096)
    body: str = Field(max_length=100_000)
    score: float | None = None


class Segments(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prefix: str = Field(max_length=500_000)
    suffix: str | None = Field(default=None, max_length=500_000)
    filepath: str | None = Field(default=None, max_length=4096)
    git_url: str | None = Field(default=None, max_length=2048)
    declarations: list[Snippet] | None = Field(default=None, max_length=64)
    relevant_snippets_from_changed_files: list[Snippet] | None = Field(default=None, max_length=64)
    relevant_snippets_from_recently_opened_files: list[Snippet] | None = Field(
        default=None, max_length=64
    )
    clipboard: str | None = Field(default=None, max_length=100_000)


class TabbyCompletionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    language: str | None = Field(default=None, max_length=64)
    segments: Segments
    user: str | None = Field(default=None, max_length=256)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    mode: str | None = None


class TabbyChoice(BaseModel):
    index: int
    text: str


class TabbyCompletionResponse(BaseModel):
    id: str
    choices: list[TabbyChoice]


class TabbyEventBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(max_length=64)
    completion_id: str = Field(min_length=1, max_length=128)
    choice_index: int = Field(default=0, ge=0, le=64)
    view_id: str | None = Field(default=None, max_length=128)
    elapsed: float | None = Field(default=None, ge=0)
    select_kind: Literal["line"] | None = None


def _comment_prefix(language: str | None) -> str:
    return _LINE_COMMENT.get((language or "").lower(), "//")


def _with_context(segments: Segments, language: str | None) -> str:
    """Prepends declarations and snippets as comments, as Tabby's own server does."""
    snippets = list(segments.declarations or []) + list(
        segments.relevant_snippets_from_changed_files or []
    )
    if not snippets:
        return segments.prefix
    mark = _comment_prefix(language)
    lines: list[str] = []
    used = 0
    for snippet in snippets:
        block = [f"{mark} Path: {snippet.filepath}"]
        block += [f"{mark} {line}" for line in snippet.body.splitlines()]
        text = "\n".join(block) + "\n"
        if used + len(text) > _MAX_CONTEXT_CHARS:
            break
        lines.append(text)
        used += len(text)
    return "".join(lines) + segments.prefix


def _json(doc: object, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _health(backend, settings) -> dict:
    facts = backend.health()
    return {
        "model": settings.model_name,
        "chat_model": settings.model_name,
        "device": facts.get("device", "cpu"),
        "arch": facts.get("arch", ""),
        "cpu_info": facts.get("cpu_info", ""),
        "cpu_count": facts.get("cpu_count", 1),
        "cuda_devices": facts.get("cuda_devices", []),
        "version": {
            "build_date": "2026-11-22",
            "build_timestamp": "2026-11-22T00:00:00Z",
            "git_sha": "gristmill",
            "git_describe": f"v{TABBY_API_VERSION}-gristmill-{__version__}",
        },
        "webserver": None,
    }


@router.get("/v1/health", summary="Tabby HealthState")
async def health_get(_: Developer, backend: BackendDep, settings: SettingsDep) -> Response:
    return _json(_health(backend, settings))


@router.post("/v1/health", summary="Tabby HealthState")
async def health_post(_: Developer, backend: BackendDep, settings: SettingsDep) -> Response:
    return _json(_health(backend, settings))


@router.get("/v1beta/server_setting", summary="Tabby server settings")
async def server_setting(_: Developer) -> Response:
    # The gateway is the telemetry sink; the agent must not send its own anywhere.
    return _json({"disable_client_side_telemetry": True})


async def complete(
    body: TabbyCompletionBody, principal: Principal, user_agent: str | None, runtime: Runtime
) -> dict:
    """A Tabby completion, recorded; shared by the route and the fast lane."""
    backend, settings = runtime.backend, runtime.settings
    prefix = _with_context(body.segments, body.language)
    req = CompletionRequest(
        prefix=prefix,
        suffix=body.segments.suffix,
        max_tokens=settings.default_max_tokens,
        temperature=body.temperature or 0.0,
        seed=body.seed,
        stop=["\n\n\n"],
        model=runtime.models.route(principal.user_hash) if runtime.models else None,
    )
    name, version = _client(user_agent)
    ctx = ServedContext(
        source="tabby",
        client_name=name,
        client_version=version,
        language=body.language,
        file_path=body.segments.filepath,
        repo=body.segments.git_url,
        prompt_template=backend.template_name,
    )
    request_id = new_request_id()
    started = time.perf_counter()
    result = await backend.complete(req)
    latency_ms = (time.perf_counter() - started) * 1000
    runtime.ingestor.submit_later(
        served_records(
            principal, ctx, request_id, prefix, req.suffix, result, backend.name, latency_ms
        )
    )
    return {
        "id": request_id,
        "choices": [{"index": c.index, "text": c.text} for c in result.choices],
    }


@router.post(
    "/v1/completions",
    response_model=TabbyCompletionResponse,
    summary="Tabby code completion",
)
async def tabby_completions(
    body: TabbyCompletionBody, request: Request, principal: Developer, runtime: RuntimeDep
) -> Response:
    return _json(await complete(body, principal, request.headers.get("user-agent"), runtime))


def _client(user_agent: str | None) -> tuple[str | None, str | None]:
    # tabby-agent sends node's generic user agent; name it for what it is.
    name, version = client_from_user_agent(user_agent)
    if name in (None, "node", "undici"):
        return "tabby-agent", None
    return name, version


_TYPES = {"view": "shown", "select": "accepted", "dismiss": "rejected"}


@router.post("/v1/events", summary="Tabby completion events (view, select, dismiss)")
async def tabby_events(
    body: TabbyEventBody,
    request: Request,
    principal: Developer,
    ingestor: IngestorDep,
    select_kind: Literal["line"] | None = Query(default=None),
) -> Response:
    kind = _TYPES.get(body.type)
    if kind is None:
        raise BadRequest(
            f"type: unknown event type {body.type!r}; expected one of view, select, dismiss"
        )
    line = (body.select_kind or select_kind) == "line"
    # Tabby sends no idempotency key; a repeat of the same view/select is the same event.
    event_id = hashlib.sha256(
        f"{body.completion_id}\x1f{body.choice_index}\x1f{body.type}\x1f{body.view_id}\x1f"
        f"{body.select_kind or select_kind}".encode()
    ).hexdigest()[:32]
    client_name, _ = _client(request.headers.get("user-agent"))
    await ingestor.submit(
        [
            event_record(
                principal,
                event_id=event_id,
                suggestion_id=suggestion_id(body.completion_id, body.choice_index),
                type=kind,
                source="tabby",
                accept_kind=("line" if line else "full") if kind == "accepted" else None,
                elapsed_ms=body.elapsed,
                client_name=client_name,
            )
        ]
    )
    return Response(status_code=200)
