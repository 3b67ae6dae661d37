"""Bearer tokens -> principals (tenant, user, roles).

The tokens file stores only the SHA-256 of each token. It is re-read when it changes on
disk, so `gristmill tokens create` takes effect on a running gateway.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from gateway.errors import Forbidden, Unauthorized, Unprocessable
from redaction import keyed_hash

Role = Literal["developer", "ml_engineer", "security_admin", "auditor"]
ROLES: tuple[Role, ...] = ("developer", "ml_engineer", "security_admin", "auditor")
ADMIN_ROLES: tuple[Role, ...] = ROLES
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_TOKEN_PREFIX = "gm_"


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    tenant: str
    user: str
    roles: frozenset[str]
    user_hash: str = ""

    def require(self, *roles: str) -> None:
        if not self.roles.intersection(roles):
            raise Forbidden(
                f"this action needs one of the roles {', '.join(roles)}; "
                f"the token for {self.user!r} has {', '.join(sorted(self.roles)) or 'none'}"
            )


def user_hash(key: bytes, tenant: str, user: str) -> str:
    """Stored instead of the user id (security invariant 4)."""
    return keyed_hash(key, f"{tenant}\x1f{user}")


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def validate_name(field: str, value: str) -> str:
    if not _NAME.match(value):
        raise Unprocessable(
            f"{field}: {value!r} must be 1-64 characters of a-z, 0-9, '_', '.', '-' "
            "starting with a letter or digit",
            errors=[{"loc": [field], "msg": "invalid name"}],
        )
    return value


class TokenStore:
    """Reads and writes the tokens file; thread-safe; reloads on change."""

    def __init__(self, path: Path, *, user_key: bytes, recheck_s: float = 1.0) -> None:
        self.path = path
        self._user_key = user_key
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._by_hash: dict[str, Principal] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = 0.0

    def _load_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._recheck_s and self._stamp is not None:
            return
        self._checked_at = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._by_hash, self._stamp = {}, (0, 0)
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._by_hash = {
            e["sha256"]: self._principal(e) for e in self._read() if not e.get("revoked")
        }
        self._stamp = stamp

    def _principal(self, entry: dict) -> Principal:
        return Principal(
            token_id=entry["id"],
            tenant=entry["tenant"],
            user=entry["user"],
            roles=frozenset(entry["roles"]),
            user_hash=user_hash(self._user_key, entry["tenant"], entry["user"]),
        )

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        try:
            doc = json.loads(self.path.read_text())
            entries = doc["tokens"]
            for e in entries:
                for key in ("id", "sha256", "tenant", "user", "roles"):
                    if key not in e:
                        raise KeyError(key)
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"tokens file {self.path} is malformed: {exc!r}") from exc
        return entries

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
        with self._lock:
            self._load_if_changed()
            principal = self._by_hash.get(_sha256(token))
        if principal is None:
            raise Unauthorized("the bearer token is not valid (unknown or revoked)")
        return principal

    def create(self, *, tenant: str, user: str, roles: list[str], name: str = "") -> str:
        """Adds a token and returns it; only its hash is stored: the one chance to see it."""
        validate_name("tenant", tenant)
        if not user or len(user) > 256:
            raise Unprocessable(
                "user: must be 1-256 characters", errors=[{"loc": ["user"], "msg": "invalid"}]
            )
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise Unprocessable(
                f"role: {', '.join(bad) or '(none)'} not one of {', '.join(ROLES)}",
                errors=[{"loc": ["role"], "msg": "unknown role"}],
            )
        token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        entry = {
            "id": "tok_" + secrets.token_hex(6),
            "sha256": _sha256(token),
            "tenant": tenant,
            "user": user,
            "roles": sorted(set(roles)),
            "name": name,
            "created_at": datetime.now(UTC).isoformat(),
        }
        with self._lock:
            entries = self._read()
            entries.append(entry)
            self._write(entries)
            self._stamp = None
        return token

    def list(self) -> list[dict]:
        with self._lock:
            return [{k: v for k, v in e.items() if k != "sha256"} for e in self._read()]

    def is_empty(self) -> bool:
        with self._lock:
            return not self._read()

    def _write(self, entries: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "tokens": entries}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
