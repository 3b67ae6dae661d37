"""OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions.

Every returned choice is a recorded suggestion; its id is in `choices[i].suggestion_id`
(an extra field OpenAI clients ignore) and is what telemetry events refer to.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.auth import Principal
from gateway.backends import (
    ChatMessage,
    ChatRequest,
    Choice,
    CompletionRequest,
    CompletionResult,
    ModelBackend,
    StreamDelta,
)
from gateway.backends.templates import split_fim
from gateway.deps import BackendDep, Developer, IngestorDep, RuntimeDep, SettingsDep
from gateway.errors import GatewayError
from gateway.recording import (
    ServedContext,
    client_from_user_agent,
    new_request_id,
    served_records,
    suggestion_id,
)
from gateway.runtime import Runtime
from gateway.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])


class GristmillContext(BaseModel):
    """Optional extension for plugins that know more than the OpenAI API carries."""

    model_config = ConfigDict(extra="forbid")
    language: str | None = Field(default=None, max_length=64)
    file_path: str | None = Field(default=None, max_length=4096)
    repo: str | None = Field(default=None, max_length=2048)
    team: str | None = Field(default=None, max_length=128)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send params we do not use
    model: str | None = Field(default=None, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=8)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    user: str | None = Field(default=None, max_length=256)
    gristmill: GristmillContext | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 16:
            raise ValueError("at most 16 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionBody(_Sampling):
    prompt: str | list[str] = Field(description="Text before the cursor (one prompt per request).")
    suffix: str | None = Field(
        default=None, description="Text after the cursor (fill-in-the-middle)."
    )

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError(
                "send exactly one prompt per request (batched prompts are not supported)"
            )
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def cursor(self) -> tuple[str, str | None]:
        """(prefix, suffix) at the cursor, undoing a FIM form the client rendered itself."""
        prompt = self.prompt_text()
        if self.suffix is None:
            split = split_fim(prompt)
            if split is not None:
                return split
        return prompt, self.suffix


class ChatMessageBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )


class ChatBody(_Sampling):
    messages: list[ChatMessageBody] = Field(min_length=1, max_length=512)


def _max_tokens(settings: Any, requested: int | None) -> int:
    # Clients ask for large budgets by default (Continue: 4096); clamp rather than refuse.
    if requested is None:
        return settings.default_max_tokens
    return min(requested, settings.max_tokens_limit)


def _context(
    user_agent: str | None, body: _Sampling, source: str, backend: ModelBackend
) -> ServedContext:
    name, version = client_from_user_agent(user_agent)
    ext = body.gristmill or GristmillContext()
    return ServedContext(
        source=source,
        client_name=name,
        client_version=version,
        language=ext.language,
        file_path=ext.file_path,
        repo=ext.repo,
        team=ext.team,
        prompt_template=backend.template_name,
    )


def _json(doc: dict[str, Any]) -> Response:
    return Response(orjson.dumps(doc), media_type="application/json")


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


@router.get("/models", summary="Models this gateway serves")
async def list_models(_: Developer, backend: BackendDep, settings: SettingsDep) -> Response:
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "id": settings.model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "gristmill",
                    "version": backend.model_version,
                }
            ],
        }
    )


def served_version(runtime: Runtime, principal: Principal) -> str | None:
    """The registry version that serves this user now (canary or active; None: the base)."""
    models = runtime.models
    return models.route(principal.user_hash) if models is not None else None


def _completion_request(
    body: CompletionBody, settings: Settings, model: str | None = None
) -> CompletionRequest:
    prefix, suffix = body.cursor()
    return CompletionRequest(
        prefix=prefix,
        suffix=suffix,
        max_tokens=_max_tokens(settings, body.max_tokens),
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n,
        stop=body.stops(),
        seed=body.seed,
        model=model,
    )


async def complete(
    body: CompletionBody, principal: Principal, user_agent: str | None, runtime: Runtime
) -> dict[str, Any]:
    """A non-streaming completion, recorded; shared by the route and the fast lane."""
    backend, settings = runtime.backend, runtime.settings
    req = _completion_request(body, settings, served_version(runtime, principal))
    ctx = _context(user_agent, body, "openai", backend)
    request_id = new_request_id()
    started = time.perf_counter()
    result = await backend.complete(req)
    latency_ms = (time.perf_counter() - started) * 1000
    runtime.ingestor.submit_later(
        served_records(
            principal, ctx, request_id, req.prefix, req.suffix, result, backend.name, latency_ms
        )
    )
    return {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": settings.model_name,
        "system_fingerprint": result.model_version,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "finish_reason": c.finish_reason,
                "logprobs": None,
                "suggestion_id": suggestion_id(request_id, c.index),
            }
            for c in result.choices
        ],
        "usage": _usage(result),
    }


@router.post("/completions", summary="OpenAI-compatible text completion (FIM with `suffix`)")
async def completions(
    body: CompletionBody, request: Request, principal: Developer, runtime: RuntimeDep
) -> Response:
    user_agent = request.headers.get("user-agent")
    if not body.stream:
        return _json(await complete(body, principal, user_agent, runtime))
    backend, settings = runtime.backend, runtime.settings
    req = _completion_request(body, settings, served_version(runtime, principal))
    ctx = _context(user_agent, body, "openai", backend)
    # The first piece is awaited here, so a backend that is down answers with problem+json.
    deltas = await _primed(backend.stream(req))
    return StreamingResponse(
        _stream_completion(
            deltas,
            req,
            ctx,
            new_request_id(),
            int(time.time()),
            principal,
            backend,
            runtime.ingestor,
            settings,
        ),
        media_type="text/event-stream",
    )


def _usage(result: CompletionResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


async def _primed(deltas: AsyncIterator[StreamDelta]) -> AsyncIterator[StreamDelta]:
    """Pulls the first delta now (raising before any byte is sent), then yields it and the rest."""
    try:
        first = await anext(deltas)
    except StopAsyncIteration:
        first = None

    async def chained() -> AsyncIterator[StreamDelta]:
        if first is not None:
            yield first
        async for delta in deltas:
            yield delta

    return chained()


async def _guarded(deltas: AsyncIterator[StreamDelta]) -> AsyncIterator[StreamDelta | bytes]:
    """Yields deltas; a failure mid-stream becomes one SSE error event (and nothing is recorded)."""
    try:
        async for delta in deltas:
            yield delta
    except GatewayError as exc:
        yield _sse_error(exc)


def _sse_error(exc: GatewayError) -> bytes:
    # Once a stream has started the status is sent; tell the client in-band, as OpenAI does.
    return _sse({"error": {"message": exc.detail, "type": type(exc).__name__, "code": exc.status}})


async def _stream_completion(
    deltas, req, ctx, request_id, created, principal, backend, ingestor, settings
) -> AsyncIterator[bytes]:
    started = time.perf_counter()
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    async for delta in _guarded(deltas):
        if isinstance(delta, bytes):
            yield delta
            return
        texts.setdefault(delta.index, []).append(delta.text)
        if delta.finish_reason:
            finish[delta.index] = delta.finish_reason
        yield _sse(
            {
                "id": request_id,
                "object": "text_completion",
                "created": created,
                "model": settings.model_name,
                "choices": [
                    {
                        "index": delta.index,
                        "text": delta.text,
                        "finish_reason": delta.finish_reason,
                        "logprobs": None,
                        "suggestion_id": suggestion_id(request_id, delta.index),
                    }
                ],
            }
        )
    yield b"data: [DONE]\n\n"
    result = CompletionResult(
        choices=[
            Choice(index=i, text="".join(parts), finish_reason=finish.get(i, "stop"))  # type: ignore[arg-type]
            for i, parts in sorted(texts.items())
        ],
        model_version=backend.version_of(req.model),
        rendered_prompt="",  # not recorded; rendering would tokenize on the event loop
    )
    latency_ms = (time.perf_counter() - started) * 1000
    ingestor.submit_later(
        served_records(
            principal, ctx, request_id, req.prefix, req.suffix, result, backend.name, latency_ms
        )
    )


@router.post("/chat/completions", summary="OpenAI-compatible chat completion")
async def chat_completions(
    body: ChatBody,
    request: Request,
    principal: Developer,
    backend: BackendDep,
    ingestor: IngestorDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    req = ChatRequest(
        messages=[ChatMessage(role=m.role, content=m.text()) for m in body.messages],
        max_tokens=_max_tokens(settings, body.max_tokens or settings.default_max_tokens),
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n,
        stop=body.stops(),
        seed=body.seed,
        model=served_version(runtime, principal),
    )
    ctx = _context(request.headers.get("user-agent"), body, "chat", backend)
    ctx.prompt_template = "chat"
    request_id = new_request_id("chatcmpl")
    created = int(time.time())
    conversation = "".join(f"<|{m.role}|>\n{m.content}\n" for m in req.messages)
    if body.stream:
        deltas = await _primed(backend.stream_chat(req))
        return StreamingResponse(
            _stream_chat(
                deltas,
                req,
                ctx,
                request_id,
                created,
                conversation,
                principal,
                backend,
                ingestor,
                settings,
            ),
            media_type="text/event-stream",
        )
    started = time.perf_counter()
    result = await backend.chat(req)
    latency_ms = (time.perf_counter() - started) * 1000
    ingestor.submit_later(
        served_records(
            principal, ctx, request_id, conversation, None, result, backend.name, latency_ms
        )
    )
    return _json(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": settings.model_name,
            "system_fingerprint": result.model_version,
            "choices": [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": None,
                    "suggestion_id": suggestion_id(request_id, c.index),
                }
                for c in result.choices
            ],
            "usage": _usage(result),
        }
    )


async def _stream_chat(
    deltas, req, ctx, request_id, created, conversation, principal, backend, ingestor, settings
) -> AsyncIterator[bytes]:
    started = time.perf_counter()
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    announced: set[int] = set()
    async for delta in _guarded(deltas):
        if isinstance(delta, bytes):
            yield delta
            return
        texts.setdefault(delta.index, []).append(delta.text)
        if delta.finish_reason:
            finish[delta.index] = delta.finish_reason
        payload: dict[str, Any] = {"content": delta.text}
        if delta.index not in announced:
            payload["role"] = "assistant"
            announced.add(delta.index)
        yield _sse(
            {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": settings.model_name,
                "choices": [
                    {
                        "index": delta.index,
                        "delta": payload,
                        "finish_reason": delta.finish_reason,
                        "logprobs": None,
                        "suggestion_id": suggestion_id(request_id, delta.index),
                    }
                ],
            }
        )
    yield b"data: [DONE]\n\n"
    result = CompletionResult(
        choices=[
            Choice(index=i, text="".join(parts), finish_reason=finish.get(i, "stop"))  # type: ignore[arg-type]
            for i, parts in sorted(texts.items())
        ],
        model_version=backend.version_of(req.model),
        rendered_prompt=conversation,
    )
    latency_ms = (time.perf_counter() - started) * 1000
    ingestor.submit_later(
        served_records(
            principal, ctx, request_id, conversation, None, result, backend.name, latency_ms
        )
    )
