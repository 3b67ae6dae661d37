"""The long-lived parts of a running gateway, built from Settings by the app lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from feedback_store import FeedbackStore
from gateway.auth import TokenStore
from gateway.backends import ModelBackend, build_backend
from gateway.ingest import Ingestor
from gateway.metrics import Metrics
from gateway.settings import Settings
from redaction import RedactionPool, load_or_create_key, load_policy

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
    metrics: Metrics = field(default_factory=Metrics)
    ready: bool = False

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        assert settings.key_file and settings.tokens_file
        key = load_or_create_key(settings.key_file)
        tokens = TokenStore(settings.tokens_file, user_key=key)
        policy = load_policy(settings.policy_file)  # a bad policy stops start-up
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
        runtime = cls(settings, key, tokens, pool, store, backend, ingestor, metrics)
        runtime.ready = True
        log.info(
            "gateway ready: backend=%s model=%s policy=%s",
            backend.name,
            backend.model_version,
            pool.policy_version,
        )
        return runtime

    async def close(self) -> None:
        self.ready = False
        await self.ingestor.close()
        self.store.close()
        self.pool.close()
        await self.backend.close()
