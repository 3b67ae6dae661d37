"""The long-lived parts of a running gateway, built from Settings by the app lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from feedback_store import FeedbackStore
from gateway.auth import TokenStore
from gateway.backends import ModelBackend, build_backend
from gateway.ingest import Ingestor
from gateway.metrics import Metrics
from gateway.serving import ModelServing
from gateway.settings import Settings
from redaction import (
    AuditLog,
    PolicyStore,
    RedactionError,
    RedactionPolicy,
    RedactionPool,
    load_or_create_key,
)

log = logging.getLogger("gristmill")


@dataclass
class Runtime:
    settings: Settings
    key: bytes
    tokens: TokenStore
    pool: RedactionPool
    store: FeedbackStore
    backend: ModelBackend
    ingestor: Ingestor
    policies: PolicyStore
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _watcher: asyncio.Task[None] | None = None
    models: ModelServing | None = None  # registry versions: routing, canary (gateway.serving)

    @property
    def audit(self) -> AuditLog:
        return self.policies.audit

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        assert settings.key_file and settings.tokens_file
        key = load_or_create_key(settings.key_file)
        tokens = TokenStore(settings.tokens_file, user_key=key)
        # A bad policy (the configured file on first start, or the stored active one) raises
        # PolicyError naming file, line and field, and stops start-up.
        policies = open_policy_store(settings)
        policy = policies.seed(settings.policy_file)
        metrics = Metrics()
        pool = RedactionPool(
            policy,
            key=key,
            workers=settings.redaction_workers,
            timeout_s=settings.redaction_timeout_s,
        )
        store = FeedbackStore(
            settings.log_dir,
            settings.parquet_dir,
            segment_bytes=settings.log_segment_bytes,
            land_interval_s=settings.land_interval_s,
            compact_interval_s=settings.compact_interval_s,
            compact_grace_s=settings.compact_grace_s,
        )
        store.start()
        backend = build_backend(settings)
        try:
            await backend.start()
        except Exception:
            store.close()
            pool.close()
            raise
        ingestor = Ingestor(pool, store, metrics, queue_size=settings.ingest_queue_size)
        await ingestor.start()
        runtime = cls(settings, key, tokens, pool, store, backend, ingestor, policies, metrics)
        runtime._watcher = asyncio.create_task(runtime._watch_policy(), name="policy-watch")
        runtime.models = await ModelServing.start(settings, backend, store, metrics)
        runtime.ready = True
        log.info(
            "gateway ready: backend=%s model=%s policy=%s",
            backend.name,
            backend.model_version,
            pool.policy_version,
        )
        return runtime

    async def reload_policy(self) -> RedactionPolicy:
        """Makes the pool redact under the store's active policy (no-op if it already does).
        A policy that fails to load keeps the current one in force and raises."""
        async with self._reload_lock:
            version = await asyncio.to_thread(self.policies.active_version)
            if version is None or version == self.pool.policy_version:
                return self.pool.policy
            policy = await asyncio.to_thread(self.policies.get, version)
            await asyncio.to_thread(self.pool.reload, policy)
            self.metrics.inc(
                "gristmill_policy_reloads_total", help="Redaction policy hot reloads.", outcome="ok"
            )
            return policy

    async def _watch_policy(self) -> None:
        """Picks up a policy applied by the CLI or another replica on the same data dir."""
        refused: str | None = None
        while True:
            await asyncio.sleep(self.settings.policy_poll_s)
            version: str | None = None
            try:
                version = await asyncio.to_thread(self.policies.active_version)
                if version == refused:
                    continue
                await self.reload_policy()
            except asyncio.CancelledError:
                raise
            except (RedactionError, OSError) as exc:
                # the stored policy is refused: keep redacting under the current one, and
                # do not retry that version (a new apply changes the pointer)
                refused = version
                self.metrics.inc(
                    "gristmill_policy_reloads_total",
                    help="Redaction policy hot reloads.",
                    outcome="refused",
                )
                log.error("policy reload refused; keeping %s: %s", self.pool.policy_version, exc)

    async def close(self) -> None:
        self.ready = False
        if self.models is not None:
            await self.models.close()
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.ingestor.close()
        self.store.close()
        self.pool.close()
        await self.backend.close()


def open_policy_store(settings: Settings) -> PolicyStore:
    """The deployment's policy store and audit log (shared by the gateway and the CLI)."""
    return PolicyStore(settings.policy_store_dir, AuditLog(settings.audit_file))
