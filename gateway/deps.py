"""Typed dependency aliases: routes read declaratively."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from feedback_store import FeedbackStore
from gateway.auth import Principal
from gateway.backends import ModelBackend
from gateway.errors import BackendUnavailable
from gateway.ingest import Ingestor
from gateway.runtime import Runtime
from gateway.settings import Settings


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.ready:
        raise BackendUnavailable("the gateway is starting or stopping; retry shortly")
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


async def get_backend(runtime: RuntimeDep) -> ModelBackend:
    return runtime.backend


async def get_ingestor(runtime: RuntimeDep) -> Ingestor:
    return runtime.ingestor


async def get_store(runtime: RuntimeDep) -> FeedbackStore:
    return runtime.store


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def get_principal(request: Request, runtime: RuntimeDep) -> Principal:
    return runtime.tokens.authenticate(_bearer(request))


def role(*roles: str):
    """Dependency factory: the caller must hold one of these roles."""

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        principal.require(*roles)
        return principal

    return check


SettingsDep = Annotated[Settings, Depends(get_settings)]
BackendDep = Annotated[ModelBackend, Depends(get_backend)]
IngestorDep = Annotated[Ingestor, Depends(get_ingestor)]
StoreDep = Annotated[FeedbackStore, Depends(get_store)]
Principal_ = Annotated[Principal, Depends(get_principal)]
Developer = Annotated[Principal, Depends(role("developer"))]
Analyst = Annotated[Principal, Depends(role("ml_engineer", "auditor"))]
MLEngineer = Annotated[Principal, Depends(role("ml_engineer"))]
