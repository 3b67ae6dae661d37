"""Gateway errors. Each knows its HTTP status; one handler renders application/problem+json.

GatewayError (500)
├── BadRequest (400)
│   └── PayloadTooLarge (413)
├── Unauthorized (401)
├── Forbidden (403)
├── NotFound (404)
├── Conflict (409)            the change is not allowed from the current state
├── Unprocessable (422)       field-level problems in ``errors``
├── BackendUnavailable (503)  the model is not loaded / upstream unreachable
│   └── BackendTimeout (504)
└── IngestUnavailable (503)   the durable log cannot take records now
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status: int = 500
    title: str = "Internal error"
    type_: str = "about:blank"

    def __init__(self, detail: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class BadRequest(GatewayError):
    status = 400
    title = "Bad request"


class PayloadTooLarge(BadRequest):
    status = 413
    title = "Payload too large"


class Unauthorized(GatewayError):
    status = 401
    title = "Unauthorized"


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"


class NotFound(GatewayError):
    status = 404
    title = "Not found"


class Conflict(GatewayError):
    status = 409
    title = "Conflict"


class Unprocessable(GatewayError):
    status = 422
    title = "Invalid request"


class BackendUnavailable(GatewayError):
    status = 503
    title = "Model backend unavailable"


class BackendTimeout(BackendUnavailable):
    status = 504
    title = "Model backend timed out"


class IngestUnavailable(GatewayError):
    status = 503
    title = "Feedback store unavailable"
