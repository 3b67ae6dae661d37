"""The model registry over HTTP: versions, promotion, rollback, retirement, the canary.

Roles: ``ml_engineer`` reads and changes; ``auditor`` reads. Every change goes through
trainer.ModelRegistry, into the audit log (actor ``api:<tenant>/<user>``), and is served at
once (the router reloads before the response). Unknown versions answer 404, transitions the
state machine refuses answer 409, both as application/problem+json.

    GET  /v1/registry/versions                 versions (oldest first) + what is served
    GET  /v1/registry/versions/{id}            lineage, metrics, gate, history
    POST /v1/registry/versions/{id}/promote    {"reason": "...", "force": false}
    POST /v1/registry/versions/{id}/retire     {"reason": "..."}
    POST /v1/registry/rollback                 {"reason": "..."}
    GET  /v1/registry/canary                   per-arm numbers, z, the decision they call for
    POST /v1/registry/canary/evaluate          the same, and carry the decision out
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.deps import Analyst, MLEngineer, RuntimeDep
from gateway.errors import BackendUnavailable, Conflict, GatewayError, NotFound
from gateway.runtime import Runtime
from gateway.serving import ModelServing
from trainer.errors import InvalidTransitionError, TrainerError, VersionNotFoundError

router = APIRouter(prefix="/v1/registry", tags=["registry"])

T = TypeVar("T")
VersionId = Path(min_length=1, max_length=64, description="A version id, e.g. v3.")


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000, description="Why; kept in the audit log.")
    force: bool = Field(
        default=False, description="Promote a candidate the gate refused (needs a reason)."
    )


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=2000, description="Why; kept in the audit log.")


def _serving(runtime: Runtime) -> ModelServing:
    if runtime.models is None:
        raise BackendUnavailable("model serving is not started")
    return runtime.models


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a registry call off the event loop, translating its errors to HTTP problems."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except VersionNotFoundError as exc:
        raise NotFound(exc.detail) from exc
    except InvalidTransitionError as exc:
        raise Conflict(exc.detail) from exc
    except TrainerError as exc:
        error = GatewayError(exc.detail)
        error.status, error.title = exc.http_status, exc.title
        raise error from exc


def _actor(principal: Principal) -> str:
    return f"api:{principal.tenant}/{principal.user}"


async def _changed(runtime: Runtime, event: dict[str, Any]) -> dict[str, Any]:
    serving = _serving(runtime)
    await asyncio.to_thread(serving.audit, event)
    await serving.router.reload(force=True)
    return {"event": event, "serving": serving.router.status()}


@router.get("/versions", summary="Model versions and what is served")
async def list_versions(_: Analyst, runtime: RuntimeDep) -> dict[str, Any]:
    serving = _serving(runtime)
    versions = await _call(serving.registry.list)
    return {
        "versions": [v.summary() for v in versions],
        "serving": serving.router.status(),
    }


@router.get("/versions/{version}", summary="One version: lineage, metrics, gate, history")
async def show_version(_: Analyst, runtime: RuntimeDep, version: str = VersionId) -> dict[str, Any]:
    found = await _call(_serving(runtime).registry.get, version)
    return found.to_json()


@router.post("/versions/{version}/promote", summary="candidate -> canary, canary -> active")
async def promote(
    principal: MLEngineer,
    runtime: RuntimeDep,
    body: PromoteBody | None = None,
    version: str = VersionId,
) -> dict[str, Any]:
    body = body or PromoteBody()
    serving = _serving(runtime)
    event = await _call(
        serving.registry.promote,
        version,
        actor=_actor(principal),
        force=body.force,
        reason=body.reason,
    )
    return await _changed(runtime, event)


@router.post("/versions/{version}/retire", summary="Retire a candidate or abort a canary")
async def retire(
    principal: MLEngineer,
    runtime: RuntimeDep,
    body: ReasonBody | None = None,
    version: str = VersionId,
) -> dict[str, Any]:
    reason = (body or ReasonBody()).reason
    serving = _serving(runtime)
    event = await _call(serving.registry.retire, version, actor=_actor(principal), reason=reason)
    return await _changed(runtime, event)


@router.post("/rollback", summary="Retire the active version; restore the previous one")
async def rollback(
    principal: MLEngineer, runtime: RuntimeDep, body: ReasonBody | None = None
) -> dict[str, Any]:
    reason = (body or ReasonBody()).reason
    serving = _serving(runtime)
    event = await _call(serving.registry.rollback, actor=_actor(principal), reason=reason)
    return await _changed(runtime, event)


@router.get("/canary", summary="Canary vs active: per-arm numbers, z-test, decision")
async def canary_status(_: Analyst, runtime: RuntimeDep) -> dict[str, Any]:
    serving = _serving(runtime)
    report = await _report(serving.canary.report)
    return {**report.to_json(), "serving": serving.router.status()}


@router.post("/canary/evaluate", summary="Judge the canary now and act on the decision")
async def canary_evaluate(_: MLEngineer, runtime: RuntimeDep) -> dict[str, Any]:
    serving = _serving(runtime)
    report = await _report(serving.canary.run_once)
    return {**report.to_json(), "serving": serving.router.status()}


async def _report(fn: Callable[[], Any]) -> Any:
    try:
        return await fn()
    except TrainerError as exc:
        error = GatewayError(exc.detail)
        error.status, error.title = exc.http_status, exc.title
        raise error from exc
