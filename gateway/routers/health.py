"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: model loaded, store and redaction running")
async def readyz(request: Request) -> JSONResponse:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse(
        {
            "status": "ready",
            "backend": runtime.backend.name,
            "model_version": runtime.backend.model_version,
            "policy_version": runtime.pool.policy_version,
            "ingest_pending": runtime.ingestor.pending,
        }
    )


@router.get("/metrics", summary="Prometheus metrics (content-free)")
async def metrics(request: Request) -> PlainTextResponse:
    runtime = getattr(request.app.state, "runtime", None)
    text = runtime.metrics.render() if runtime is not None else ""
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
