"""Every accepted redaction policy, kept by version, with the pointer to the active one.

Layout under the store's root (the deployment's `data_dir/policies`):

    versions/sha256-<hex>.yaml   the policy text as first accepted
    versions/sha256-<hex>.json   who stored it, when, why, from where
    active.json                  the active version (replaced atomically)
    history.jsonl                one line per activation (who, when, why, from which version)

Apply = validate -> store -> activate -> audit, under an exclusive lock of the store, so the
CLI and a gateway on the same data directory never interleave. A refused policy never
replaces the active one. Running gateways poll `active_version()` and hot-reload.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redaction.audit import AuditLog
from redaction.errors import PolicyError, PolicyNotFound
from redaction.policy import RedactionPolicy, load_policy, parse_policy

SEED_ACTOR = "system:seed"


@dataclass(frozen=True)
class StoredPolicy:
    """A stored version's provenance (the text is in the .yaml next to it)."""

    version: str
    stored_at: str
    actor: str
    reason: str
    source: str


@dataclass(frozen=True)
class Activation:
    """One switch of the active policy."""

    time: str
    actor: str
    reason: str
    version: str
    previous: str | None


@dataclass(frozen=True)
class ApplyResult:
    policy: RedactionPolicy
    previous: str | None
    changed: bool


@dataclass(frozen=True)
class PolicyDiff:
    """What changed from one version to another: a summary and a unified diff of the YAML."""

    from_version: str
    to_version: str
    summary: dict[str, Any]
    unified: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Changes:
    added: list[Any] = field(default_factory=list)
    removed: list[Any] = field(default_factory=list)
    changed: list[Any] = field(default_factory=list)


class PolicyStore:
    def __init__(self, root: Path, audit: AuditLog) -> None:
        self.root = Path(root)
        self.audit = audit
        self._versions = self.root / "versions"
        self._active = self.root / "active.json"
        self._history = self.root / "history.jsonl"

    # --- reading -------------------------------------------------------------------------

    def is_empty(self) -> bool:
        return not self._active.exists()

    def active_version(self) -> str | None:
        """The active version, or None for an empty store. Cheap: one small file read."""
        try:
            return str(json.loads(self._active.read_text(encoding="utf-8"))["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyError(
                f"policy store {self._active} is unreadable",
                [{"loc": "version", "line": None, "msg": type(exc).__name__}],
            ) from exc

    def active_policy(self) -> RedactionPolicy:
        """The active policy, validated again: a bad one raises PolicyError naming its file,
        line and field (a gateway must not start on it)."""
        version = self.active_version()
        if version is None:
            raise PolicyNotFound(f"the policy store {self.root} is empty")
        return self.get(version)

    def get(self, version: str) -> RedactionPolicy:
        path = self._text_path(version)
        if not path.exists():
            raise PolicyNotFound(f"no stored policy has version {version!r}")
        return load_policy(path)

    def text(self, version: str) -> str:
        path = self._text_path(version)
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise PolicyNotFound(f"no stored policy has version {version!r}") from exc

    def info(self, version: str) -> StoredPolicy:
        try:
            meta = json.loads(self._meta_path(version).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise PolicyNotFound(f"no stored policy has version {version!r}") from exc
        return StoredPolicy(**meta)

    def versions(self) -> list[StoredPolicy]:
        """Every stored version, oldest first."""
        if not self._versions.exists():
            return []
        out = [
            StoredPolicy(**json.loads(p.read_text(encoding="utf-8")))
            for p in self._versions.glob("*.json")
        ]
        return sorted(out, key=lambda s: (s.stored_at, s.version))

    def history(self, limit: int | None = None) -> list[Activation]:
        """Activations, newest first."""
        if not self._history.exists():
            return []
        with open(self._history, encoding="utf-8") as f:
            items = [Activation(**json.loads(line)) for line in f if line.strip()]
        items.reverse()
        return items if limit is None else items[:limit]

    def diff(self, from_version: str, to_version: str) -> PolicyDiff:
        return diff_policies(self.get(from_version), self.get(to_version))

    # --- writing -------------------------------------------------------------------------

    def seed(self, path: Path) -> RedactionPolicy:
        """Fills an empty store from a policy file (raises PolicyError if it is bad); a store
        that already has an active policy is left alone. Returns the active policy."""
        with self._locked():
            if not self.is_empty():
                return self.active_policy()
            policy = load_policy(path)
            self._store(policy, SEED_ACTOR, f"seeded from {path}")
            self._activate(policy.version, SEED_ACTOR, f"seeded from {path}", None)
            self.audit.append(
                SEED_ACTOR,
                "policy.seed",
                {"new_version": policy.version, "source": str(path), "reason": "first start"},
            )
            return policy

    def apply(self, text: str, *, actor: str, reason: str, source: str = "<api>") -> ApplyResult:
        """Validates, stores and activates a policy, and audits who and why.

        Raises PolicyError (nothing changes) for a bad policy. Applying the active version
        again changes nothing and writes no audit entry (`changed` is False).
        """
        _require(actor=actor, reason=reason)
        policy = parse_policy(text, source=source)
        with self._locked():
            previous = self.active_version()
            if policy.version == previous:
                return ApplyResult(policy, previous, changed=False)
            self._store(policy, actor, reason)
            self._activate(policy.version, actor, reason, previous)
            self.audit.append(
                actor,
                "policy.apply",
                {
                    "old_version": previous,
                    "new_version": policy.version,
                    "reason": reason,
                    "source": source,
                },
            )
        return ApplyResult(policy, previous, changed=True)

    def activate(self, version: str, *, actor: str, reason: str) -> ApplyResult:
        """Makes a stored version active again (a rollback), validating it first."""
        _require(actor=actor, reason=reason)
        policy = self.get(version)
        with self._locked():
            previous = self.active_version()
            if version == previous:
                return ApplyResult(policy, previous, changed=False)
            self._activate(version, actor, reason, previous)
            self.audit.append(
                actor,
                "policy.activate",
                {"old_version": previous, "new_version": version, "reason": reason},
            )
        return ApplyResult(policy, previous, changed=True)

    def _store(self, policy: RedactionPolicy, actor: str, reason: str) -> None:
        if self._text_path(policy.version).exists():
            return  # same meaning stored before: keep the first text and provenance
        self._versions.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._text_path(policy.version), policy.text)
        meta = StoredPolicy(
            version=policy.version,
            stored_at=_now(),
            actor=actor,
            reason=reason,
            source=policy.source,
        )
        _write_atomic(self._meta_path(policy.version), json.dumps(asdict(meta), indent=1))

    def _activate(self, version: str, actor: str, reason: str, previous: str | None) -> None:
        activation = Activation(_now(), actor, reason, version, previous)
        _write_atomic(self._active, json.dumps(asdict(activation), indent=1))
        with open(self._history, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(activation)) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _text_path(self, version: str) -> Path:
        return self._versions / f"{_file_stem(version)}.yaml"

    def _meta_path(self, version: str) -> Path:
        return self._versions / f"{_file_stem(version)}.json"


def _file_stem(version: str) -> str:
    algo, _, digest = version.partition(":")
    if algo != "sha256" or not digest or not all(c in "0123456789abcdef" for c in digest):
        raise PolicyNotFound(f"{version!r} is not a policy version (sha256:<hex>)")
    return f"sha256-{digest}"


def _require(**values: str) -> None:
    for name, value in values.items():
        if not value or not value.strip():
            raise PolicyError(
                f"{name} is required", [{"loc": name, "line": None, "msg": "must not be empty"}]
            )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --- diff ----------------------------------------------------------------------------------


def diff_policies(old: RedactionPolicy, new: RedactionPolicy) -> PolicyDiff:
    """A structured summary of what changed, and a unified diff of the two YAML texts."""
    a, b = old.document, new.document
    entities = _Changes(
        added=sorted(set(b.entities) - set(a.entities)),
        removed=sorted(set(a.entities) - set(b.entities)),
        changed=[
            {
                "entity": name,
                "from": a.entities[name].model_dump(),
                "to": b.entities[name].model_dump(),
            }
            for name in sorted(set(a.entities) & set(b.entities))
            if a.entities[name] != b.entities[name]
        ],
    )
    summary: dict[str, Any] = {
        "entities": asdict(entities),
        "allow_literals": _list_changes(a.allow.literals, b.allow.literals),
        "allow_regexes": _list_changes(a.allow.regexes, b.allow.regexes),
        "custom_recognizers": _named_changes(a.custom_recognizers, b.custom_recognizers),
        "path_rules": _list_changes(
            [f"{r.glob} -> {r.action}" for r in a.path_rules],
            [f"{r.glob} -> {r.action}" for r in b.path_rules],
        ),
        "opt_out_repos": _list_changes(a.opt_out_repos, b.opt_out_repos),
        "prose_fields": _list_changes(a.prose_fields, b.prose_fields),
        "overrides": _named_changes(a.overrides, b.overrides),
        "description_changed": a.description != b.description,
    }
    summary["changed"] = old.version != new.version
    unified = "".join(
        difflib.unified_diff(
            old.text.splitlines(keepends=True),
            new.text.splitlines(keepends=True),
            fromfile=old.version,
            tofile=new.version,
        )
    )
    return PolicyDiff(old.version, new.version, summary, unified)


def _list_changes(old: list[str], new: list[str]) -> dict[str, list[str]]:
    return {
        "added": [x for x in new if x not in old],
        "removed": [x for x in old if x not in new],
    }


def _named_changes(old: list[Any], new: list[Any]) -> dict[str, list[str]]:
    a = {item.name: item for item in old}
    b = {item.name: item for item in new}
    return {
        "added": [n for n in b if n not in a],
        "removed": [n for n in a if n not in b],
        "changed": [n for n in b if n in a and a[n] != b[n]],
    }
