"""The FastAPI application. The lifespan owns every long-lived part (see runtime.py)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from feedback_store import StoreError
from gateway import __version__
from gateway.errors import GatewayError
from gateway.fastlane import FastLane
from gateway.problems import problem, validation_problem
from gateway.routers import (
    analytics,
    continue_,
    datasets,
    health,
    openai,
    policies,
    registry,
    tabby,
    telemetry,
)
from gateway.runtime import Runtime
from gateway.settings import Settings
from redaction import RedactionError

log = logging.getLogger("gristmill")


class BodyLimit:
    """Refuses bodies over the configured size before they are read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    await self._refuse(scope, receive, send)
                    return
                break
        received = 0
        limit = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "Payload too large",
            f"request body exceeds {self.max_bytes} bytes (setting max_body_bytes)",
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """The FastAPI app. `freeze_gc` (the served process only): once start-up has loaded
    everything (torch, Presidio, pyarrow), move it out of the collector's sight, so full
    collections scan only what requests allocate instead of pausing for every module."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings)
        app.state.runtime = runtime
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await runtime.close()
            app.state.runtime = None

    app = FastAPI(
        title="Gristmill gateway",
        version=__version__,
        description="In-firewall gateway between IDE coding assistants and a private model. "
        "Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        # No OpenTelemetry from the framework: nothing may export anywhere unless settings say so.
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
    )

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return problem(exc.status, exc.title, exc.detail, exc.errors)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, exc: StoreError) -> Response:
        return problem(getattr(exc, "http_status", 500), type(exc).__name__, str(exc))

    @app.exception_handler(RedactionError)
    async def _redaction_error(_: Request, exc: RedactionError) -> Response:
        return problem(
            getattr(exc, "http_status", 500),
            type(exc).__name__,
            str(exc),
            getattr(exc, "errors", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return validation_problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return problem(exc.status_code, str(exc.detail), str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.error("unhandled error: %s", type(exc).__name__)  # never the payload
        return problem(500, "Internal error", "an unexpected error occurred; see the gateway log")

    for module in (
        openai, tabby, continue_, telemetry, analytics, datasets, policies, registry, health,
    ):  # fmt: skip
        app.include_router(module.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def create_asgi(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastLane:
    """The served ASGI app: the completion fast lane in front of the FastAPI app."""
    settings = settings or Settings()
    return FastLane(
        create_app(settings, freeze_gc=freeze_gc), max_body_bytes=settings.max_body_bytes
    )
