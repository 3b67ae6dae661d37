"""Training-data snapshots (role ml_engineer): list, card, build for the caller's tenant.

A snapshot is visible to a tenant when it was built for that tenant alone (scope), or holds
data of that tenant only; one tenant never reads another's data or names.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import Principal
from gateway.deps import SettingsDep, role
from gateway.errors import GatewayError, NotFound, Unprocessable

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

MLEngineer = Annotated[Principal, Depends(role("ml_engineer"))]

# One build at a time per process: each may use the DuckDB memory limit.
_BUILDS = threading.Semaphore(1)


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: datetime = Field(description="Suggestions created at or after (with a time zone).")
    until: datetime = Field(
        description="Suggestions created before; events after it are ignored (with a time zone)."
    )


class SnapshotSummary(BaseModel):
    id: str
    built_at: str | None = None
    time_range: dict[str, Any] | None = None
    scope: dict[str, Any] | None = None
    tenants: list[str]
    languages: list[str]
    rules_version: str | None = None
    rows: dict[str, int]
    split_rows: dict[str, int] | None = None


class SnapshotList(BaseModel):
    snapshots: list[SnapshotSummary]


def _visible(card_or_summary: dict[str, Any], tenant: str) -> bool:
    scope = (card_or_summary.get("scope") or {}).get("tenants")
    if scope is not None:
        return list(scope) == [tenant]
    tenants = card_or_summary.get("tenants") or []
    return bool(tenants) and all(t == tenant for t in tenants)


def _translate(exc: Exception) -> GatewayError:
    status = getattr(exc, "http_status", 500)
    if status == 404:
        return NotFound(str(exc))
    if status == 422:
        errors = getattr(exc, "errors", None) or None
        return Unprocessable(str(exc), errors=errors)
    error = GatewayError(str(exc))
    error.status = status
    error.title = getattr(exc, "title", error.title)
    return error


@router.get("", response_model=SnapshotList, summary="Dataset snapshots of the caller's tenant")
async def list_datasets(principal: MLEngineer, settings: SettingsDep) -> SnapshotList:
    from trainer.datasets import list_snapshots

    summaries = await asyncio.to_thread(list_snapshots, settings.data_dir / "datasets")
    return SnapshotList(
        snapshots=[SnapshotSummary(**s) for s in summaries if _visible(s, principal.tenant)]
    )


@router.get("/{snapshot_id}", summary="A snapshot's card (counts, rules, split, content hashes)")
async def get_dataset(
    snapshot_id: str, principal: MLEngineer, settings: SettingsDep
) -> JSONResponse:
    from trainer.datasets import DatasetError, read_card

    try:
        card = await asyncio.to_thread(read_card, settings.data_dir / "datasets", snapshot_id)
    except DatasetError as exc:
        raise _translate(exc) from exc
    if not _visible(card, principal.tenant):
        raise NotFound(f"no snapshot {snapshot_id!r}")  # not "forbidden": do not confirm it
    return JSONResponse(card)


@router.post(
    "",
    response_model=SnapshotSummary,
    status_code=201,
    summary="Build a snapshot of the caller's tenant (200 when an identical one exists)",
)
async def build_dataset(
    body: BuildRequest, principal: MLEngineer, settings: SettingsDep
) -> JSONResponse:
    from gateway.cli_datasets import build_config
    from redaction import RedactionError
    from trainer.datasets import DatasetError, build_snapshot, snapshot_summary

    for name, value in (("since", body.since), ("until", body.until)):
        if value.tzinfo is None:
            raise Unprocessable(
                f"{name} must carry a time zone (e.g. 2026-01-01T00:00:00Z)",
                errors=[{"loc": ["body", name], "msg": "time zone required"}],
            )

    def run() -> Any:
        with _BUILDS:
            config = build_config(settings, body.since, body.until, tenants=(principal.tenant,))
            return build_snapshot(config)

    try:
        snapshot = await asyncio.to_thread(run)
    except (DatasetError, RedactionError) as exc:
        raise _translate(exc) from exc
    return JSONResponse(
        SnapshotSummary(**snapshot_summary(snapshot.card)).model_dump(),
        status_code=201 if snapshot.created else 200,
    )
