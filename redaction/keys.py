"""The per-deployment secret key and the keyed hash built on it."""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from redaction.errors import KeyFileError

KEY_BYTES = 32


def load_or_create_key(path: Path) -> bytes:
    """Returns the deployment key stored at `path` (hex), creating it (0600) on first use."""
    path = Path(path)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(KEY_BYTES)
        # O_EXCL: two workers starting together must not both write a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read key file {path}: {type(exc).__name__}") from exc
    try:
        key = bytes.fromhex(text)
    except (ValueError, binascii.Error) as exc:
        raise KeyFileError(f"key file {path} is not hex") from exc
    if len(key) < KEY_BYTES:
        raise KeyFileError(f"key file {path} holds {len(key)} bytes; at least {KEY_BYTES} needed")
    return key


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA256 of `value` under the deployment key, as hex."""
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()
