"""The model router: which registry version serves each request.

The registry (trainer.ModelRegistry, data_dir/models/registry) says which version is active
and which one is the canary; the router keeps exactly those adapters loaded in the backend
and answers ``route(user_hash)`` with the adapter name to put in ``CompletionRequest.model``:

- a sticky share of users (``canary_share``) gets the canary: ``in_canary(user_hash, canary)``
  hashes the pair, so a user keeps their arm for the canary's life, and each new canary
  draws a fresh sample of users;
- everyone else gets the active version, or the base model (``None``) when none is active.

``reload()`` reads the registry (skipped when the file did not change, unless forced), loads
what is newly wanted, switches routing in one assignment, then unloads what is no longer
wanted; requests see either the old routing or the new one, never a mix. ``watch()`` polls the
registry file (settings.registry_poll_s) so a promotion made by the CLI or another replica is
served without a restart; the HTTP API forces a reload right after each change.

A version that cannot be served (its adapter fails to load, or it was trained on another base
model) is left out: its users get the base model, and the router logs it, counts it in
``gristmill_model_load_failures_total`` and reports it in ``status()["errors"]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.backends import ModelBackend
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from trainer import ModelRegistry, ModelVersion
from trainer.errors import TrainerError

__all__ = ["ModelRouter", "Routing", "in_canary"]

log = logging.getLogger("gristmill")

_SCALE = float(1 << 64)


def in_canary(user_hash: str, canary: str, share: float) -> bool:
    """Whether this user is in the canary arm of version ``canary`` (sticky, uniform)."""
    if share <= 0.0:
        return False
    digest = hashlib.sha256(f"{canary}\x1f{user_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE < share


@dataclass(frozen=True, slots=True)
class Routing:
    """What is served now. Replaced as a whole, so one request sees one consistent state."""

    active: str | None = None  # adapter name (registry version id); None = the base model
    canary: str | None = None
    canary_share: float = 0.0
    canary_since: str | None = None  # when the canary entered its state (ISO 8601)

    def choose(self, user_hash: str) -> str | None:
        if self.canary is not None and in_canary(user_hash, self.canary, self.canary_share):
            return self.canary
        return self.active


@dataclass
class ModelRouter:
    """Keeps the backend serving the registry's active version and at most one canary.

    ``adapter_path`` maps a version to the path the backend loads it from (the upstream
    model server may mount the registry elsewhere); ``base_hash`` returns the served base
    model's content hash (trainer.base_model_hash) to refuse adapters trained on another base,
    or is None when it cannot be known (an upstream server).
    """

    registry: ModelRegistry
    backend: ModelBackend
    canary_share: float = 0.1
    metrics: Metrics | None = None
    adapter_path: Callable[[ModelVersion], Path] = lambda v: Path(v.adapter_dir)
    base_hash: Callable[[], str] | None = None
    routing: Routing = field(default_factory=Routing)
    errors: dict[str, str] = field(default_factory=dict)  # version -> why it is not served
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _seen: tuple[int, int] | None = None  # (mtime_ns, size) of the registry file last read
    _base_hash: str | None = None

    def route(self, user_hash: str) -> str | None:
        """The adapter to serve this user (None: the base model)."""
        return self.routing.choose(user_hash)

    def model_version(self, version_id: str | None) -> str:
        """The model_version string suggestions served by ``version_id`` record."""
        return self.backend.version_of(version_id)

    async def reload(self, *, force: bool = False) -> Routing:
        """Bring the backend and routing in line with the registry; returns the new routing."""
        async with self._lock:
            stamp = await asyncio.to_thread(self._stamp)
            if not force and stamp == self._seen:
                return self.routing
            try:
                active, canary = await asyncio.to_thread(self._wanted)
            except TrainerError as exc:  # an unreadable registry: keep serving what we serve
                log.error("model registry unreadable; routing unchanged: %s", exc)
                return self.routing
            self._seen = stamp
            current = self.routing
            wanted = {v.id for v in (active, canary) if v is not None}
            self.errors = {k: v for k, v in self.errors.items() if k in wanted}
            new_active = await self._serveable(active)
            new_canary = await self._serveable(canary)
            since = _entered(canary, "canary") if canary and new_canary == canary.id else None
            routing = Routing(new_active, new_canary, self.canary_share, since)
            self.routing = routing
            keep = {name for name in (routing.active, routing.canary) if name}
            for name in self.backend.adapters():
                if name not in keep:
                    await self._unload(name)
            if routing != current:
                log.info(
                    "serving: active=%s canary=%s (share %.3f)",
                    routing.active or "base",
                    routing.canary or "-",
                    routing.canary_share if routing.canary else 0.0,
                )
            return routing

    async def watch(self, poll_s: float) -> None:
        """Poll the registry file; runs until cancelled."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the watcher die; the next poll retries
                log.error("model registry reload failed: %s", type(exc).__name__)

    def status(self) -> dict[str, Any]:
        routing = self.routing
        return {
            "active": routing.active,
            "canary": routing.canary,
            "canary_share": routing.canary_share if routing.canary else 0.0,
            "canary_since": routing.canary_since,
            "base_model_version": self.backend.model_version,
            "active_model_version": self.model_version(routing.active),
            "canary_model_version": self.model_version(routing.canary) if routing.canary else None,
            "loaded_adapters": self.backend.adapters(),
            "errors": dict(self.errors),
        }

    # ---------------------------------------------------------------- internals

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = (self.registry.root / "registry.json").stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _wanted(self) -> tuple[ModelVersion | None, ModelVersion | None]:
        return self.registry.active(), self.registry.canary()

    async def _serveable(self, version: ModelVersion | None) -> str | None:
        """Load ``version`` if needed; its name, or None (the base) when it cannot be served."""
        if version is None:
            return None
        if version.id in self.backend.adapters():
            return version.id
        problem = await self._check_base(version)
        if problem is None:
            try:
                await self.backend.load_adapter(version.id, self.adapter_path(version))
            except (GatewayError, NotImplementedError) as exc:
                problem = getattr(exc, "detail", None) or str(exc)
        if problem is not None:
            if self.errors.get(version.id) != problem:
                log.error("model version %s not served: %s", version.id, problem)
            self.errors[version.id] = problem
            if self.metrics is not None:
                self.metrics.inc(
                    "gristmill_model_load_failures_total",
                    help="Registry versions the gateway could not serve.",
                )
            return None
        self.errors.pop(version.id, None)
        return version.id

    async def _check_base(self, version: ModelVersion) -> str | None:
        if self.base_hash is None:
            return None
        if self._base_hash is None:
            self._base_hash = await asyncio.to_thread(self.base_hash)
        if version.base_model_hash != self._base_hash:
            return (
                f"trained on base model {version.base_model_hash[:12]}, but this gateway serves "
                f"{self._base_hash[:12]}"
            )
        return None

    async def _unload(self, name: str) -> None:
        try:
            await self.backend.unload_adapter(name)
        except GatewayError as exc:
            log.error("unloading model version %s failed: %s", name, exc.detail)


def _entered(version: ModelVersion, state: str) -> str | None:
    """When ``version`` last entered ``state`` (from its history)."""
    for entry in reversed(version.history):
        if entry.get("to_state") == state:
            return entry.get("at")
    return None
