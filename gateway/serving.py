"""Model versions in a running gateway: the router, the canary analyzer and their timers.

Owned by the Runtime (started before the gateway reports ready, closed first on shutdown).
Routers read ``runtime.models.router.route(principal.user_hash)``; the registry API and
``gristmill loop run`` (through HTTP) use ``router.reload(force=True)`` after a change and
``canary.report()`` / ``canary.run_once()`` for the analysis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedback_store import FeedbackStore
from gateway.backends import ModelBackend
from gateway.canary import CanaryAnalyzer
from gateway.metrics import Metrics
from gateway.routing import ModelRouter
from gateway.settings import Settings
from trainer import ModelRegistry, ModelVersion, base_model_hash

__all__ = ["ModelServing"]

log = logging.getLogger("gristmill")


@dataclass
class ModelServing:
    settings: Settings
    registry: ModelRegistry
    router: ModelRouter
    canary: CanaryAnalyzer
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def audit(self, event: dict[str, Any]) -> None:
        """Write a registry event to the deployment's audit log (blocking: call off the loop)."""
        _write_audit(self.settings, event)

    def route(self, user_hash: str) -> str | None:
        """The registry version to serve this user (None: the base model)."""
        return self.router.route(user_hash)

    @classmethod
    async def start(
        cls, settings: Settings, backend: ModelBackend, store: FeedbackStore, metrics: Metrics
    ) -> ModelServing:
        registry = ModelRegistry(settings.registry_dir)
        router = ModelRouter(
            registry,
            backend,
            canary_share=settings.canary_share,
            metrics=metrics,
            adapter_path=_adapter_path(settings),
            base_hash=_base_hash(settings, backend),
        )
        canary = CanaryAnalyzer(
            registry,
            router,
            store,
            audit=lambda event: _write_audit(settings, event),
            confidence=settings.canary_confidence,
            min_shown=settings.canary_min_shown,
        )
        serving = cls(settings, registry, router, canary)
        await router.reload(force=True)
        serving._tasks.append(
            asyncio.create_task(router.watch(settings.registry_poll_s), name="registry-watch")
        )
        if settings.canary_check_interval_s > 0:
            serving._tasks.append(
                asyncio.create_task(
                    serving._judge_periodically(settings.canary_check_interval_s),
                    name="canary-check",
                )
            )
        return serving

    async def _judge_periodically(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.canary.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store may be busy or empty; try again next time
                log.error("canary check failed: %s: %s", type(exc).__name__, exc)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()


def _write_audit(settings: Settings, event: dict[str, Any]) -> None:
    from gateway.cli_train import write_audit  # the one place registry events are audited

    write_audit(settings, event)


def _adapter_path(settings: Settings):
    if settings.backend == "openai_upstream" and settings.upstream_adapter_dir is not None:
        root = settings.upstream_adapter_dir

        def remote(version: ModelVersion) -> Path:
            return root / version.id / "adapter"

        return remote
    return lambda version: Path(version.adapter_dir)


def _base_hash(settings: Settings, backend: ModelBackend):
    if backend.name != "embedded" or settings.model_dir is None:
        return None  # an upstream server's weights cannot be hashed from here
    model_dir = settings.model_dir
    return lambda: base_model_hash(model_dir)
