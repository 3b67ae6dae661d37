"""The completion hot path as a bare ASGI layer in front of FastAPI.

Completions are the one request an IDE sends on every keystroke pause, and the gateway's
CPU per request decides how many developers one core serves (bench/completion_overhead.py).
FastAPI's dependency solving and middleware stack cost more than the proxying itself, so
non-streaming completions are answered here: same authentication, same pydantic models
(validated from JSON bytes in pydantic-core), same shared `complete()` functions, same
problem+json errors. Everything else, including streaming and the OpenAPI document, goes
to the FastAPI app, where these routes are declared too.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import BackendUnavailable, GatewayError
from gateway.problems import problem
from gateway.routers import openai, tabby

log = logging.getLogger("gristmill")

Handler = Callable[[Any, Any, str | None, Any], Awaitable[dict[str, Any]]]

_JSON_HEADERS = [(b"content-type", b"application/json")]


class _BodyTooLarge(Exception):
    pass


class FastLane:
    def __init__(self, app: FastAPI, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.routes: dict[str, tuple[type[BaseModel], Handler]] = {
            "/v1/completions": (openai.CompletionBody, openai.complete),
            "/tabby/v1/completions": (tabby.TabbyCompletionBody, tabby.complete),
        }

    @property
    def state(self) -> Any:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.routes.get(scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            raw = await self._read(scope, receive)
        except _BodyTooLarge:
            await _send(send, _too_large(self.max_body_bytes))
            return
        model, handler = route
        try:
            body = model.model_validate_json(raw) if raw else None
        except ValidationError:
            body = None
        if body is None or getattr(body, "stream", False):
            # Streams, and anything FastAPI must explain, take the declared route.
            await self.app(scope, _replay(raw, receive), send)
            return
        await _send(send, await self._serve(scope, body, handler))

    async def _serve(self, scope: Scope, body: BaseModel, handler: Handler) -> Any:
        runtime = getattr(self.app.state, "runtime", None)
        try:
            if runtime is None or not runtime.ready:
                raise BackendUnavailable("the gateway is starting or stopping; retry shortly")
            headers = dict(scope["headers"])
            principal = runtime.tokens.authenticate(_bearer(headers.get(b"authorization")))
            principal.require("developer")
            user_agent = headers.get(b"user-agent")
            doc = await handler(
                body, principal, user_agent.decode("latin-1") if user_agent else None, runtime
            )
        except GatewayError as exc:
            return problem(exc.status, exc.title, exc.detail, exc.errors)
        except Exception as exc:  # same contract as the app's catch-all handler
            log.error("unhandled error: %s", type(exc).__name__)  # never the payload
            return problem(
                500, "Internal error", "an unexpected error occurred; see the gateway log"
            )
        return orjson.dumps(doc)

    async def _read(self, scope: Scope, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _bearer(header: bytes | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _replay(raw: bytes, receive: Receive) -> Receive:
    """The body already read, then the real channel (streams listen on it for a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replayed


def _too_large(limit: int) -> Any:
    return problem(
        413, "Payload too large", f"request body exceeds {limit} bytes (setting max_body_bytes)"
    )


async def _send(send: Send, response: Any) -> None:
    if isinstance(response, bytes):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(response)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": response})
        return
    await send(
        {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
    )
    await send({"type": "http.response.body", "body": response.body})
