"""Exceptions of the redaction package.

    RedactionError (500)            base; never carries payload text
    ├── PolicyError (422)           a policy file is refused; .errors names field and line
    ├── KeyFileError (500)          the per-deployment key cannot be read or created
    ├── EngineError (500)           Presidio / spaCy could not be set up (model missing, ...)
    ├── AuditError (500)            the audit log cannot be appended to (broken last entry)
    ├── PolicyNotFound (404)        no stored policy has that version
    └── RedactionTimeout (504)      one record exceeded its time limit (fail closed)

Messages name fields, entities and reasons, never the text being redacted.
"""

from __future__ import annotations

from typing import TypedDict


class FieldError(TypedDict):
    """One problem in a policy: dotted location, 1-based line (None if unknown), message."""

    loc: str
    line: int | None
    msg: str


class RedactionError(Exception):
    """Base of every error raised by the redaction package."""

    http_status = 500


class PolicyError(RedactionError):
    """A policy was refused; `errors` lists every problem found."""

    http_status = 422

    def __init__(self, message: str, errors: list[FieldError]) -> None:
        self.errors = errors
        lines = "; ".join(
            f"{e['loc'] or '<root>'}"
            + (f" (line {e['line']})" if e["line"] else "")
            + f": {e['msg']}"
            for e in errors
        )
        super().__init__(f"{message}: {lines}" if lines else message)


class KeyFileError(RedactionError):
    """The key file is unreadable, malformed or cannot be created."""


class EngineError(RedactionError):
    """The analysis engine (Presidio, spaCy) could not be built."""


class AuditError(RedactionError):
    """The audit log cannot be appended to (its last entry is unreadable)."""


class PolicyNotFound(RedactionError):
    """The policy store holds no policy of that version."""

    http_status = 404


class RedactionTimeout(RedactionError):
    """A record ran past its time limit. Deliberately not a TimeoutError: Presidio's
    PatternRecognizer swallows TimeoutError and skips the pattern, which would fail open."""

    http_status = 504
