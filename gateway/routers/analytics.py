"""Acceptance analytics over the landed feedback (roles ml_engineer, auditor)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway.deps import Analyst, StoreDep

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])


class AcceptanceRow(BaseModel):
    group: str | None
    shown: int
    accepted: int
    acceptance_rate: float
    accepted_chars: int


class AcceptanceReport(BaseModel):
    tenant: str
    group_by: str
    rows: list[AcceptanceRow]


@router.get("/acceptance", response_model=AcceptanceReport, summary="Acceptance by group")
async def acceptance(
    principal: Analyst,
    store: StoreDep,
    group_by: Literal["model_version", "language", "client", "day"] = Query(
        default="model_version"
    ),
    since: datetime | None = Query(default=None),
    until: datetime | None = Query(default=None),
) -> AcceptanceReport:
    # The caller's tenant, never a parameter: one tenant never reads another's data.
    rows = await asyncio.to_thread(
        store.catalog().acceptance, principal.tenant, group_by, since=since, until=until
    )
    return AcceptanceReport(
        tenant=principal.tenant,
        group_by=group_by,
        rows=[AcceptanceRow(**r) for r in rows],
    )
