"""Continue's development-data destination (`data:` block in Continue's config.yaml).

Continue (core/data/log.ts, DataLogger.logToOneDestination) POSTs one JSON envelope per event,
`{name, data, schema, level, profileId}`, with `Authorization: Bearer <apiKey>`; `data` is
the event parsed by the zod schema of that version and level (packages/config-yaml/src/schemas/
data), so unknown keys are already stripped. We store schema 0.2.0 `autocomplete` (one
suggestion and its outcome) and `editOutcome` (code before vs after, or older Continue versions'
prompt vs completion). Level `noCode` carries no code, so nothing can be learned from it: such
events, and other event names, are acknowledged and counted, not stored.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.auth import Principal
from gateway.deps import Developer, IngestorDep, RuntimeDep
from gateway.errors import Unprocessable
from gateway.ingest import RawRecord
from gateway.recording import client_from_user_agent, event_record

router = APIRouter(prefix="/continue", tags=["continue"])

_COUNTED_NAMES = {
    "autocomplete",
    "editOutcome",
    "chatInteraction",
    "chatFeedback",
    "quickEdit",
    "tokensGenerated",
    "toolUsage",
    "nextEditOutcome",
    "nextEditWithHistory",
}


class DevDataEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=128)
    data: dict[str, Any]
    schema_: str | None = Field(default=None, alias="schema", max_length=32)
    level: str | None = Field(default=None, max_length=32)
    profileId: str | None = Field(default=None, max_length=256)


class AutocompleteData(BaseModel):
    model_config = ConfigDict(extra="ignore")
    accepted: bool | None = None
    completionId: str = Field(min_length=1, max_length=128)
    completion: str = Field(max_length=500_000)
    prefix: str = Field(default="", max_length=500_000)
    suffix: str | None = Field(default=None, max_length=500_000)
    filepath: str | None = Field(default=None, max_length=4096)
    gitRepo: str | None = Field(default=None, max_length=2048)
    modelName: str | None = Field(default=None, max_length=256)
    modelProvider: str | None = Field(default=None, max_length=128)
    time: float | None = Field(default=None, ge=0)
    timestamp: str | None = None


class EditOutcomeData(BaseModel):
    """Newer Continue sends previousCode/newCode; earlier 0.2.0 releases only prompt/completion."""

    model_config = ConfigDict(extra="ignore")
    previousCode: str | None = Field(default=None, max_length=500_000)
    newCode: str | None = Field(default=None, max_length=500_000)
    prompt: str | None = Field(default=None, max_length=500_000)
    completion: str | None = Field(default=None, max_length=500_000)
    accepted: bool | None = None
    filepath: str | None = Field(default=None, max_length=4096)
    gitRepo: str | None = Field(default=None, max_length=2048)
    modelName: str | None = Field(default=None, max_length=256)
    modelTitle: str | None = Field(default=None, max_length=256)
    modelProvider: str | None = Field(default=None, max_length=128)
    streamId: str | None = Field(default=None, max_length=128)

    def before_after(self) -> tuple[str, str]:
        if self.newCode is not None:
            return self.previousCode or "", self.newCode
        if self.completion is not None:
            return self.prompt or "", self.completion
        raise Unprocessable(
            "data.newCode: field required (or data.completion, as older Continue versions send)",
            errors=[{"loc": ["body", "data", "newCode"], "msg": "Field required"}],
        )


def _parse(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [
            {"loc": ["body", "data", *map(str, e["loc"])], "msg": e["msg"]} for e in exc.errors()
        ]
        first = errors[0]
        raise Unprocessable(f"{'.'.join(first['loc'][1:])}: {first['msg']}", errors=errors) from exc


def _path(filepath: str | None) -> str | None:
    """Continue sends file URIs; path rules in the redaction policy match plain paths."""
    if filepath and filepath.startswith("file://"):
        return unquote(urlsplit(filepath).path)
    return filepath


def _stable_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _suggestion(
    principal: Principal,
    *,
    sid: str,
    client_name: str | None,
    source: str,
    prefix: str,
    suffix: str | None,
    completion: str,
    file_path: str | None,
    repo: str | None,
    model: str | None,
    provider: str | None,
    latency_ms: float,
) -> RawRecord:
    return RawRecord(
        record_type="suggestion",
        tenant=principal.tenant,
        meta={
            "suggestion_id": sid,
            "request_id": sid,
            "tenant": principal.tenant,
            "team": None,
            "user_hash": principal.user_hash,
            "client_name": client_name or "continue",
            "client_version": None,
            "source": source,
            "language": None,
            "choice_index": 0,
            "model_version": model or "unknown",
            "backend": provider or "unknown",
            "latency_ms": latency_ms,
            "created_at": datetime.now(UTC),
            "prompt_template": None,
        },
        texts={
            "prefix": prefix,
            "suffix": suffix,
            "completion": completion,
            "file_path": file_path,
            "repo": repo,
        },
        file_path=file_path,
        repo=repo,
    )


@router.post("/dev-data", status_code=202, summary="Continue dev-data destination (schema 0.2.0)")
async def dev_data(
    envelope: DevDataEnvelope,
    request: Request,
    principal: Developer,
    ingestor: IngestorDep,
    runtime: RuntimeDep,
) -> JSONResponse:
    client_name, _ = client_from_user_agent(request.headers.get("user-agent"))
    records: list[RawRecord] = []
    if envelope.level == "noCode" and envelope.name in _COUNTED_NAMES:
        runtime.metrics.inc(
            "gristmill_continue_nocode_events_total",
            help="Continue dev-data events sent at level noCode: acknowledged, not stored.",
            event=envelope.name,
        )
        return JSONResponse({"stored": 0, "quarantined": 0, "dropped": 0, "ignored": 1}, 202)
    if envelope.name == "autocomplete":
        d: AutocompleteData = _parse(AutocompleteData, envelope.data)
        sid = f"continue-{d.completionId}"
        records.append(
            _suggestion(
                principal,
                sid=sid,
                client_name=client_name,
                source="continue",
                prefix=d.prefix,
                suffix=d.suffix,
                completion=d.completion,
                file_path=_path(d.filepath),
                repo=d.gitRepo,
                model=d.modelName,
                provider=d.modelProvider,
                latency_ms=d.time or 0.0,
            )
        )
        # Continue logs an autocomplete once it was displayed; accepted says what came of it.
        outcomes = [("shown", None)]
        if d.accepted is True:
            outcomes.append(("accepted", "full"))
        elif d.accepted is False:
            outcomes.append(("rejected", None))
        for kind, accept_kind in outcomes:
            records.append(
                event_record(
                    principal,
                    event_id=_stable_id(sid, kind),
                    suggestion_id=sid,
                    type=kind,
                    source="continue",
                    accept_kind=accept_kind,
                    accepted_text=d.completion if kind == "accepted" else None,
                    client_name=client_name or "continue",
                )
            )
    elif envelope.name == "editOutcome":
        e: EditOutcomeData = _parse(EditOutcomeData, envelope.data)
        before, after = e.before_after()
        sid = "continue-edit-" + _stable_id(principal.user_hash, e.streamId or "", before, after)
        records.append(
            _suggestion(
                principal,
                sid=sid,
                client_name=client_name,
                source="continue_edit",
                prefix=before,
                suffix=None,
                completion=after,
                file_path=_path(e.filepath),
                repo=e.gitRepo,
                model=e.modelName or e.modelTitle,
                provider=e.modelProvider,
                latency_ms=0.0,
            )
        )
        kinds = ["shown"] + (
            ["accepted"] if e.accepted is True else ["rejected"] if e.accepted is False else []
        )
        for kind in kinds:
            records.append(
                event_record(
                    principal,
                    event_id=_stable_id(sid, kind),
                    suggestion_id=sid,
                    type=kind,
                    source="continue",
                    accept_kind="full" if kind == "accepted" else None,
                    accepted_text=after if kind == "accepted" else None,
                    client_name=client_name or "continue",
                )
            )
    else:
        label = envelope.name if envelope.name in _COUNTED_NAMES else "other"
        runtime.metrics.inc(
            "gristmill_continue_events_ignored_total",
            help="Continue dev-data events acknowledged but not stored, by event name.",
            event=label,
        )
        return JSONResponse({"stored": 0, "quarantined": 0, "dropped": 0, "ignored": 1}, 202)
    receipt = await ingestor.submit(records)
    return JSONResponse(
        {"stored": receipt.stored, "quarantined": receipt.quarantined, "dropped": receipt.dropped},
        status_code=202,
    )
