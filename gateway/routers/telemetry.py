"""Native telemetry for plugins customers write: what happened to each suggestion."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.deps import Developer, IngestorDep
from gateway.recording import client_from_user_agent, event_record

router = APIRouter(prefix="/v1/telemetry", tags=["telemetry"])

EventType = Literal["shown", "accepted", "rejected", "edited", "survived"]


class TelemetryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_id: str = Field(min_length=1, max_length=128, description="Idempotency key.")
    suggestion_id: str = Field(min_length=1, max_length=128)
    type: EventType
    ts: datetime | None = Field(default=None, description="When it happened; default: received.")
    accept_kind: Literal["full", "line", "word"] | None = None
    accepted_text: str | None = Field(default=None, max_length=100_000)
    final_text: str | None = Field(default=None, max_length=100_000)
    elapsed_ms: float | None = Field(default=None, ge=0)
    window_s: float | None = Field(default=None, ge=0)
    file_path: str | None = Field(default=None, max_length=4096)
    repo: str | None = Field(default=None, max_length=2048)

    @model_validator(mode="after")
    def _fields_for_type(self) -> TelemetryEvent:
        if self.type == "accepted" and self.accept_kind is None:
            self.accept_kind = "full"
        if (
            self.type == "accepted"
            and self.accept_kind in ("line", "word")
            and not self.accepted_text
        ):
            raise ValueError("accepted_text is required for a line or word accept")
        if self.type == "edited" and self.final_text is None:
            raise ValueError("final_text is required for an edited event")
        if self.type == "survived" and (self.window_s is None or self.final_text is None):
            raise ValueError("window_s and final_text are required for a survived event")
        if self.ts is not None and self.ts.tzinfo is None:
            raise ValueError("ts must carry a timezone (e.g. 2026-01-01T12:00:00Z)")
        return self


class TelemetryBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[TelemetryEvent] = Field(min_length=1, max_length=1000)


class IngestReceipt(BaseModel):
    stored: int
    quarantined: int
    dropped: int


@router.post(
    "/events",
    status_code=202,
    response_model=IngestReceipt,
    summary="Report shown/accepted/rejected/edited/survived events (idempotent by event_id)",
)
async def post_events(
    batch: TelemetryBatch, request: Request, principal: Developer, ingestor: IngestorDep
) -> JSONResponse:
    client_name, _ = client_from_user_agent(request.headers.get("user-agent"))
    receipt = await ingestor.submit(
        [
            event_record(
                principal,
                event_id=e.event_id,
                suggestion_id=e.suggestion_id,
                type=e.type,
                source="native",
                ts=e.ts,
                accept_kind=e.accept_kind,
                accepted_text=e.accepted_text,
                final_text=e.final_text,
                elapsed_ms=e.elapsed_ms,
                window_s=e.window_s,
                client_name=client_name,
                file_path=e.file_path,
                repo=e.repo,
            )
            for e in batch.events
        ]
    )
    return JSONResponse(
        {"stored": receipt.stored, "quarantined": receipt.quarantined, "dropped": receipt.dropped},
        status_code=202,
    )
