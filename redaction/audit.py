"""An append-only, hash-chained audit log (security invariant 6).

One JSON object per line:

    {"seq": 1, "time": "...", "actor": "cli:alice", "action": "policy.apply",
     "details": {...}, "prev_hash": "000...", "hash": "<sha256 of the entry without hash>"}

Each entry's hash covers its content and the previous entry's hash, so editing, deleting,
inserting or reordering any entry breaks the chain from there on. A sidecar head file
(`<log>.head`: last seq and hash) catches entries cut off the end. Appenders in several
processes (the CLI and the gateway) serialise on an exclusive flock of the log file.
Generic: policy changes, model promotions, exports and erasures all write here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redaction.errors import AuditError

GENESIS = "0" * 64
MAX_DETAILS_BYTES = 64 * 1024


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    time: str
    actor: str
    action: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditVerification:
    """The result of `AuditLog.verify()`: `ok`, how many entries were intact, and the first
    broken one (its seq as written, 1-based line number, and what is wrong)."""

    ok: bool
    entries: int
    first_bad_seq: int | None = None
    first_bad_line: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def entry_hash(fields: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of an entry's fields except `hash`."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class AuditLog:
    """The log at `path` (created on first append). Safe for concurrent appenders."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.name + ".head")

    def append(
        self, actor: str, action: str, details: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        """Writes one entry (fsynced) chained to the last one and returns it."""
        if not actor or not action:
            raise ValueError("audit entries need an actor and an action")
        details = dict(details or {})
        encoded = json.dumps(details, sort_keys=True, default=str)
        if len(encoded) > MAX_DETAILS_BYTES:
            raise ValueError(f"audit details over {MAX_DETAILS_BYTES} bytes")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last = _last_line(fd)
            if last is None:
                seq, prev = 1, GENESIS
            else:
                try:
                    previous = json.loads(last)
                    seq, prev = int(previous["seq"]) + 1, str(previous["hash"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise AuditError(
                        f"audit log {self.path}: the last entry is unreadable; "
                        "run `gristmill audit verify`"
                    ) from exc
            fields: dict[str, Any] = {
                "seq": seq,
                "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                "actor": actor,
                "action": action,
                "details": json.loads(encoded),
                "prev_hash": prev,
            }
            fields["hash"] = entry_hash(fields)
            line = json.dumps(fields, sort_keys=True, ensure_ascii=False) + "\n"
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
            self._write_head(seq, fields["hash"])
            return AuditEntry(**fields)
        finally:
            os.close(fd)  # releases the lock

    def _write_head(self, seq: int, digest: str) -> None:
        tmp = self.head_path.with_name(self.head_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"seq": seq, "hash": digest}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.head_path)

    def entries(self) -> Iterator[AuditEntry]:
        """Every readable entry in file order (unverified; see `verify`)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield AuditEntry(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # not an entry (tampering or a torn write): `verify` reports it

    def tail(self, limit: int = 100, *, action_prefix: str | None = None) -> list[AuditEntry]:
        """The last `limit` entries (optionally only actions starting with a prefix), newest
        first."""
        out: list[AuditEntry] = []
        for entry in self.entries():
            if action_prefix is None or entry.action.startswith(action_prefix):
                out.append(entry)
                if len(out) > limit:
                    out.pop(0)
        return out[::-1]

    def verify(self) -> AuditVerification:
        """Walks the chain; the first entry that does not hold is reported."""
        if not self.path.exists():
            return AuditVerification(
                ok=not self.head_path.exists(),
                entries=0,
                reason=None
                if not self.head_path.exists()
                else "the log file is missing but its head exists",
            )
        prev, count, seq = GENESIS, 0, 0
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                problem, written_seq = _check_line(line, seq + 1, prev)
                if problem:
                    return AuditVerification(False, count, written_seq, number, problem)
                entry = json.loads(line)
                prev, seq, count = entry["hash"], entry["seq"], count + 1
        head = self._read_head()
        if head is not None and (head.get("seq"), head.get("hash")) != (seq, prev):
            return AuditVerification(
                False,
                count,
                head.get("seq") if isinstance(head.get("seq"), int) else None,
                count + 1,
                f"the log ends at seq {seq} but entry {head.get('seq')} was written: "
                "entries were removed from the end",
            )
        return AuditVerification(True, count)

    def _read_head(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.head_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            return {"seq": None, "hash": None}


def _check_line(line: str, expected_seq: int, prev: str) -> tuple[str | None, int | None]:
    if not line.endswith("\n"):
        return "incomplete last line", None
    try:
        entry = json.loads(line)
    except ValueError:
        return "not valid JSON", None
    if not isinstance(entry, dict):
        return "not a JSON object", None
    keys = {"seq", "time", "actor", "action", "details", "prev_hash", "hash"}
    if set(entry) != keys:
        return f"fields are {sorted(entry)}, expected {sorted(keys)}", None
    seq = entry["seq"] if isinstance(entry["seq"], int) else None
    if entry["hash"] != entry_hash(entry):
        return "content does not match its hash (edited)", seq
    if entry["prev_hash"] != prev:
        return "previous-hash link broken (an entry before it was removed, added or moved)", seq
    if seq != expected_seq:
        return f"seq {entry['seq']} where {expected_seq} was expected", seq
    return None, seq


def _last_line(fd: int) -> str | None:
    """The file's last non-empty line, read backwards from the end."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return None
    block = 8192
    data = b""
    pos = size
    while pos > 0:
        step = min(block, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
        stripped = data.rstrip(b"\n")
        if b"\n" in stripped or pos == 0:
            return stripped.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace") or None
    return None
