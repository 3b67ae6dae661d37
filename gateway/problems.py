"""application/problem+json rendering, used by every error path."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

PROBLEM = "application/problem+json"


def problem(
    status: int, title: str, detail: str, errors: list[dict[str, Any]] | None = None
) -> Response:
    doc: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        doc["errors"] = errors
    return Response(orjson.dumps(doc), status_code=status, media_type=PROBLEM)


def validation_problem(exc: RequestValidationError) -> Response:
    errors = []
    malformed = False
    for e in exc.errors():
        loc = [str(p) for p in e.get("loc", ())]
        if (
            e.get("type") in ("json_invalid", "json_type")
            or loc == ["body"]
            and e.get("type") == "missing"
        ):
            malformed = True
        errors.append({"loc": loc, "msg": e.get("msg", ""), "type": e.get("type", "")})
    if malformed:
        return problem(
            400,
            "Malformed request body",
            "the body is not valid JSON (or not UTF-8); send a JSON object",
            errors,
        )
    first = errors[0] if errors else {"loc": [], "msg": "invalid"}
    field = ".".join(p for p in first["loc"] if p != "body") or "body"
    return problem(422, "Invalid request", f"{field}: {first['msg']}", errors)
