"""The model registry: versioned adapters with lineage and a state machine.

    candidate ──promote──▶ canary ──promote──▶ active ──(next promote / rollback)──▶ retired
        └──────retire─────────┴──retire──▶ retired          retired ──rollback──▶ active

A candidate reaches canary only with a passed gate (or ``force`` with a reason); a canary
becomes active and the previous active is retired; ``rollback`` retires the active version and
restores the one active before it (or the base model when there was none). Everything lives in
``<root>/registry.json`` (atomic replace, under an exclusive file lock) and each version's
adapter is copied to ``<root>/<version>/adapter``. Every state change returns an event dict;
the caller writes it to the audit log (trainer does not import redaction).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer.errors import (
    InvalidTransitionError,
    RegistryCorruptError,
    VersionNotFoundError,
)
from trainer.train import directory_hash

__all__ = ["STATES", "ModelRegistry", "ModelVersion"]

STATES = ("candidate", "canary", "active", "retired")
_FORMAT = 1
_FILE = "registry.json"
_LOCK = ".registry.lock"


@dataclass(frozen=True)
class ModelVersion:
    """One registered adapter and where it came from."""

    id: str
    state: str
    created_at: str
    adapter_dir: str
    adapter_hash: str
    base_model_dir: str
    base_model_hash: str
    snapshot_id: str | None
    snapshot_card_hash: str | None
    policy_versions: list[str]
    rules_version: str | None
    method: str | None
    training_config: dict[str, Any]
    metrics: dict[str, Any]
    gate: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        gate = self.gate or {}
        return {
            "id": self.id,
            "state": self.state,
            "created_at": self.created_at,
            "method": self.method,
            "snapshot_id": self.snapshot_id,
            "gate_passed": gate.get("passed"),
            "adapter_hash": self.adapter_hash[:12],
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ModelRegistry:
    """Versions under ``root`` (data_dir/models/registry)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # ------------------------------------------------------------ storage

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The registry document under an exclusive lock; written back when the block ends."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            doc = self._read()
            before = json.dumps(doc, sort_keys=True)
            yield doc
            if json.dumps(doc, sort_keys=True) != before:
                self._write(doc)
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        path = self.root / _FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": _FORMAT, "versions": {}, "active": None, "canary": None,
                    "active_history": []}  # fmt: skip
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RegistryCorruptError(f"cannot read {path}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise RegistryCorruptError(f"{path} is not a format-{_FORMAT} registry")
        return doc

    def _write(self, doc: dict[str, Any]) -> None:
        path = self.root / _FILE
        tmp = path.with_name(f".{_FILE}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # ------------------------------------------------------------ reading

    def list(self) -> list[ModelVersion]:
        """Every version, oldest first."""
        doc = self._read()
        versions = [ModelVersion(**v) for v in doc["versions"].values()]
        return sorted(versions, key=lambda v: int(v.id.removeprefix("v")))

    def get(self, version_id: str) -> ModelVersion:
        doc = self._read()
        if version_id not in doc["versions"]:
            raise VersionNotFoundError(f"version: no model version {version_id!r}")
        return ModelVersion(**doc["versions"][version_id])

    def active(self) -> ModelVersion | None:
        """The version served to everyone (None: the base model)."""
        doc = self._read()
        return ModelVersion(**doc["versions"][doc["active"]]) if doc["active"] else None

    def canary(self) -> ModelVersion | None:
        doc = self._read()
        return ModelVersion(**doc["versions"][doc["canary"]]) if doc["canary"] else None

    # ------------------------------------------------------------ changes

    def register_training(
        self,
        trained: Any,
        *,
        base_model_dir: Path | str,
        card: dict[str, Any],
        training_config: dict[str, Any],
        gate: dict[str, Any] | None,
        actor: str = "system",
    ) -> tuple[ModelVersion, dict[str, Any]]:
        """``register`` a training run's result (a trainer.train.TrainResult) with the lineage
        its snapshot card gives (policy and rules versions); the log history stays out."""
        return self.register(
            trained.adapter_dir,
            base_model_dir=base_model_dir,
            base_model_hash=trained.base_model_hash,
            snapshot_id=trained.snapshot_id,
            snapshot_card_hash=trained.snapshot_card_hash,
            policy_versions=list(card.get("policy_versions", [])),
            rules_version=card.get("rules_version"),
            method=trained.method,
            training_config=training_config,
            metrics={k: v for k, v in trained.metrics.items() if k != "log_history"},
            gate=gate,
            actor=actor,
        )

    def register(
        self,
        adapter_dir: Path | str,
        *,
        base_model_dir: Path | str,
        base_model_hash: str,
        snapshot_id: str | None,
        snapshot_card_hash: str | None,
        policy_versions: list[str],
        rules_version: str | None,
        method: str | None,
        training_config: dict[str, Any],
        metrics: dict[str, Any],
        gate: dict[str, Any] | None,
        actor: str = "system",
    ) -> tuple[ModelVersion, dict[str, Any]]:
        """Copy the adapter in and record a new candidate; returns it and the audit event."""
        source = Path(adapter_dir)
        if not (source / "adapter_config.json").is_file():
            raise InvalidTransitionError(f"adapter_dir: {source} is not a PEFT adapter directory")
        adapter_hash = directory_hash(source)
        with self._locked() as doc:
            number = 1 + max((int(v.removeprefix("v")) for v in doc["versions"]), default=0)
            version_id = f"v{number}"
            target = self.root / version_id / "adapter"
            staging = self.root / version_id / ".adapter.partial"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging)
            os.replace(staging, target)
            if directory_hash(target) != adapter_hash:
                raise RegistryCorruptError(f"the copy of {source} does not match its hash")
            at = _now()
            event = self._event("model.register", version_id, None, "candidate", actor, at)
            version = ModelVersion(
                id=version_id,
                state="candidate",
                created_at=at,
                adapter_dir=str(target),
                adapter_hash=adapter_hash,
                base_model_dir=str(base_model_dir),
                base_model_hash=base_model_hash,
                snapshot_id=snapshot_id,
                snapshot_card_hash=snapshot_card_hash,
                policy_versions=list(policy_versions),
                rules_version=rules_version,
                method=method,
                training_config=training_config,
                metrics=metrics,
                gate=gate,
                history=[_history(event)],
            )
            doc["versions"][version_id] = version.to_json()
        return version, event

    def promote(
        self, version_id: str, *, actor: str, force: bool = False, reason: str = ""
    ) -> dict[str, Any]:
        """candidate -> canary (gate must have passed unless forced), canary -> active."""
        with self._locked() as doc:
            entry = self._entry(doc, version_id)
            state = entry["state"]
            if state == "candidate":
                gate = entry.get("gate") or {}
                if not gate.get("passed") and not force:
                    why = "; ".join(gate.get("reasons", [])) or "no gate result"
                    raise InvalidTransitionError(
                        f"{version_id} did not pass the evaluation gate ({why}); "
                        "force it with a reason to promote anyway"
                    )
                if force and not gate.get("passed") and not reason.strip():
                    raise InvalidTransitionError("reason: forcing past the gate needs a reason")
                if doc["canary"]:
                    raise InvalidTransitionError(
                        f"{doc['canary']} is already the canary; promote or retire it first"
                    )
                doc["canary"] = version_id
                return self._move(doc, version_id, "canary", actor, "model.promote", reason)
            if state == "canary":
                previous = doc["active"]
                events_extra: dict[str, Any] = {"previous_active": previous}
                if previous:
                    self._set_state(doc, previous, "retired", actor, "model.promote", reason)
                    doc["active_history"].append(previous)
                doc["active"], doc["canary"] = version_id, None
                return self._move(
                    doc, version_id, "active", actor, "model.promote", reason, **events_extra
                )
            raise InvalidTransitionError(
                f"{version_id} is {state}; only a candidate or canary can be promoted"
            )

    def retire(self, version_id: str, *, actor: str, reason: str = "") -> dict[str, Any]:
        """candidate or canary -> retired (the active one leaves by rollback or promotion)."""
        with self._locked() as doc:
            state = self._entry(doc, version_id)["state"]
            if state not in ("candidate", "canary"):
                raise InvalidTransitionError(
                    f"{version_id} is {state}; only a candidate or canary can be retired "
                    "(the active version leaves by rollback or by promoting another)"
                )
            if doc["canary"] == version_id:
                doc["canary"] = None
            return self._move(doc, version_id, "retired", actor, "model.retire", reason)

    def rollback(self, *, actor: str, reason: str = "") -> dict[str, Any]:
        """Retire the active version and restore the one active before it (or the base)."""
        with self._locked() as doc:
            current = doc["active"]
            if not current:
                raise InvalidTransitionError(
                    "nothing to roll back: the base model is active (no version was promoted)"
                )
            restored = doc["active_history"].pop() if doc["active_history"] else None
            self._set_state(doc, current, "retired", actor, "model.rollback", reason)
            doc["active"] = restored
            if restored:
                self._set_state(doc, restored, "active", actor, "model.rollback", reason)
            return self._event(
                "model.rollback", current, "active", "retired", actor, _now(),
                restored=restored, reason=reason,
            )  # fmt: skip

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _entry(doc: dict[str, Any], version_id: str) -> dict[str, Any]:
        if version_id not in doc["versions"]:
            raise VersionNotFoundError(f"version: no model version {version_id!r}")
        return doc["versions"][version_id]

    def _move(
        self,
        doc: dict[str, Any],
        version_id: str,
        to_state: str,
        actor: str,
        action: str,
        reason: str,
        **extra: Any,
    ) -> dict[str, Any]:
        from_state = doc["versions"][version_id]["state"]
        self._set_state(doc, version_id, to_state, actor, action, reason)
        return self._event(
            action, version_id, from_state, to_state, actor, _now(), reason=reason, **extra
        )

    def _set_state(
        self, doc: dict[str, Any], version_id: str, to_state: str, actor: str, action: str,
        reason: str,
    ) -> None:  # fmt: skip
        entry = doc["versions"][version_id]
        event = self._event(action, version_id, entry["state"], to_state, actor, _now(),
                            reason=reason)  # fmt: skip
        entry["state"] = to_state
        entry.setdefault("history", []).append(_history(event))

    @staticmethod
    def _event(
        action: str,
        version_id: str,
        from_state: str | None,
        to_state: str,
        actor: str,
        at: str,
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "action": action,
            "version": version_id,
            "from_state": from_state,
            "to_state": to_state,
            "actor": actor,
            "at": at,
            **{k: v for k, v in extra.items() if v not in (None, "")},
        }


def _history(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in ("action", "from_state", "to_state", "actor", "at") if k in event}
