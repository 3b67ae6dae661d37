"""Redaction off the event loop: one worker thread, or a pool of processes.

Fail closed: every item gets an outcome, never an exception. A record that errors or runs
past its time limit becomes a content-free `RedactionFailure`; the caller quarantines it.

The time limit is enforced twice. Inside the worker, the Redactor checks a deadline
between stages and bounds its regexes, so a slow record stops itself and frees the
worker. Outside, a watchdog fails any item still running well past the limit (a worker
stuck in native code); a stuck or dead process pool is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from redaction.engine import DEFAULT_SPACY_MODEL, ner_entities, spacy_model_installed
from redaction.errors import EngineError, RedactionError, RedactionTimeout
from redaction.policy import RedactionPolicy
from redaction.redactor import RedactedFields, Redactor

log = logging.getLogger("gristmill.redaction")

READY_TIMEOUT_S = 300.0
# Items per executor hand-off. Big enough that hand-off costs vanish, small enough that a
# batch still spreads over the workers and one failed chunk loses little.
CHUNK_MAX = 32


@dataclass(frozen=True)
class RedactionItem:
    """One record to redact: its text fields and what the policy rules look at."""

    fields: Mapping[str, str | None]
    file_path: str | None = None
    repo: str | None = None
    tenant: str | None = None


@dataclass(frozen=True)
class RedactionFailure:
    """Why a record was not redacted. Content-free: `timeout`, `worker_lost`, `error:<Type>`.
    `policy_version` is the version the record was handed to."""

    reason: str
    policy_version: str = field(default="", compare=False)


Outcome = RedactedFields | RedactionFailure | None


def redact_item(redactor: Redactor, item: RedactionItem, timeout_s: float | None) -> Outcome:
    """Runs one item, turning any failure into a RedactionFailure (never the message:
    exception texts may quote the payload)."""
    try:
        return redactor.redact(
            item.fields,
            file_path=item.file_path,
            repo=item.repo,
            tenant=item.tenant,
            timeout_s=timeout_s,
        )
    except RedactionTimeout:
        return RedactionFailure("timeout", redactor.policy_version)
    except Exception as exc:  # fail closed on anything
        log.error("redaction failed: %s", type(exc).__name__)
        return RedactionFailure(f"error:{type(exc).__name__}", redactor.policy_version)


# Worker processes only: the Redactor their initializer built.
_worker_redactor: Redactor | None = None


def _init_worker(policy: RedactionPolicy, key: bytes, spacy_model: str, cache_size: int) -> None:
    global _worker_redactor
    _worker_redactor = Redactor(policy, key=key, spacy_model=spacy_model, cache_size=cache_size)


def redact_chunk(
    redactor: Redactor, items: list[RedactionItem], timeout_s: float | None
) -> list[Outcome]:
    """Several items in one call: one executor hand-off (and, across processes, one pickle
    round trip) per chunk instead of per item."""
    return [redact_item(redactor, item, timeout_s) for item in items]


def _worker_redact_chunk(items: list[RedactionItem], timeout_s: float) -> list[Outcome]:
    if _worker_redactor is None:
        return [RedactionFailure("error:WorkerNotInitialized")] * len(items)
    return redact_chunk(_worker_redactor, items, timeout_s)


def _worker_version() -> str:
    return _worker_redactor.policy_version if _worker_redactor else ""


@dataclass(frozen=True)
class _State:
    """What new chunks go to. Replaced as a whole (reload, broken pool), never mutated, so
    a chunk always pairs an executor with the policy it was started with."""

    executor: Executor
    redactor: Redactor | None  # thread mode only
    policy: RedactionPolicy


class RedactionPool:
    """Redacts batches of records with `workers` processes (0: one thread in this process)."""

    def __init__(
        self,
        policy: RedactionPolicy,
        *,
        key: bytes,
        workers: int,
        timeout_s: float,
        spacy_model: str = DEFAULT_SPACY_MODEL,
        cache_size: int = 8192,
    ) -> None:
        if workers < 0:
            raise ValueError("workers must be >= 0")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        self._key = key
        self._workers = workers
        self._timeout_s = timeout_s
        self._spacy_model = spacy_model
        self._cache_size = cache_size
        # Past this much running time an item is failed from outside (the worker's own
        # deadline should have fired long before); a process pool pre-dispatches one item
        # per worker, hence twice the limit.
        self._backstop_s = 2 * timeout_s + 1.0
        self._poll_s = min(1.0, max(0.01, timeout_s / 4))
        self._closed = False
        self._lock = threading.Lock()  # serialises reloads and pool replacements
        self._retired: list[Executor] = []
        self._state = self._start(policy)
        if workers == 0:
            # one thread for every policy version: the next version's chunks queue behind
            # the chunks already handed to the old one
            self._thread = self._state.executor

    @property
    def policy(self) -> RedactionPolicy:
        return self._state.policy

    @property
    def policy_version(self) -> str:
        """The version new records are redacted under (each outcome carries its own)."""
        return self._state.policy.version

    def _start(self, policy: RedactionPolicy) -> _State:
        """A ready executor for `policy`; raises (EngineError, PolicyError) if it cannot be."""
        if self._workers == 0:
            redactor = Redactor(
                policy, key=self._key, spacy_model=self._spacy_model, cache_size=self._cache_size
            )
            executor = getattr(self, "_thread", None) or ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="gristmill-redaction"
            )
            return _State(executor, redactor, policy)
        if ner_entities(policy) and not spacy_model_installed(self._spacy_model):
            raise EngineError(f"spaCy model '{self._spacy_model}' is not installed")
        pool = self._new_process_pool(policy)
        self._wait_ready(pool, policy)
        return _State(pool, None, policy)

    def reload(self, policy: RedactionPolicy) -> None:
        """Switches to another policy without dropping records. Blocking (run it off the
        event loop): the new Redactor or process pool is built and ready before the switch;
        chunks already handed out finish under the old version, and their outcomes say so.
        On failure the old policy stays in force and the error is raised."""
        if self._closed:
            raise RedactionError("the redaction pool is closed")
        with self._lock:
            if policy.version == self.policy_version:
                return
            fresh = self._start(policy)
            old, self._state = self._state, fresh
        if old.executor is not fresh.executor:
            # running and queued chunks complete; the processes exit afterwards
            old.executor.shutdown(wait=False)
            self._retired.append(old.executor)
        log.info("redaction policy reloaded: %s -> %s", old.policy.version, policy.version)

    def _new_process_pool(self, policy: RedactionPolicy) -> ProcessPoolExecutor:
        # spawn: the gateway process has threads (and maybe torch); forking it is unsafe.
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(policy, self._key, self._spacy_model, self._cache_size),
        )

    def _wait_ready(self, pool: ProcessPoolExecutor, policy: RedactionPolicy) -> None:
        """Blocks until a worker has built its Redactor; a pool that cannot is refused."""
        try:
            versions = [
                f.result(timeout=READY_TIMEOUT_S)
                for f in [pool.submit(_worker_version) for _ in range(self._workers)]
            ]
        except Exception as exc:
            pool.shutdown(wait=False, cancel_futures=True)
            raise EngineError(f"redaction workers failed to start: {type(exc).__name__}") from exc
        if any(v != policy.version for v in versions):
            pool.shutdown(wait=False, cancel_futures=True)
            raise EngineError("redaction workers started with another policy version")

    async def redact_many(self, items: list[RedactionItem]) -> list[Outcome]:
        """One outcome per item, in order: RedactedFields, None (dropped by policy) or
        RedactionFailure. Never raises for an item's sake."""
        if self._closed:
            raise RedactionError("the redaction pool is closed")
        state = self._state
        size = max(1, min(CHUNK_MAX, -(-len(items) // max(1, self._workers))))
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        if state.redactor is not None:
            submitted = self._submit(state, chunks)
        else:
            # ProcessPoolExecutor.submit wakes its manager thread through a pipe under a lock
            # that thread also takes: on a busy process that blocks for milliseconds, which
            # must not happen on the event loop's thread.
            submitted = await asyncio.to_thread(self._submit, state, chunks)
        waits = []
        for chunk, (future, executor, version) in zip(chunks, submitted, strict=True):
            if isinstance(future, RedactionFailure):
                waits.append(_failed(future, len(chunk)))
            else:
                waits.append(self._await(future, executor, len(chunk), version))
        return [outcome for chunk_out in await asyncio.gather(*waits) for outcome in chunk_out]

    def _submit(
        self, state: _State, chunks: list[list[RedactionItem]]
    ) -> list[tuple[Future[list[Outcome]] | RedactionFailure, Executor, str]]:
        out: list[tuple[Future[list[Outcome]] | RedactionFailure, Executor, str]] = []
        for chunk in chunks:
            version = state.policy.version
            try:
                if state.redactor is not None:
                    future = state.executor.submit(
                        redact_chunk, state.redactor, chunk, self._timeout_s
                    )
                else:
                    future = state.executor.submit(_worker_redact_chunk, chunk, self._timeout_s)
            except (BrokenProcessPool, RuntimeError) as exc:
                log.error("redaction pool unavailable: %s", type(exc).__name__)
                self._replace(state.executor)
                state = self._state
                out.append((RedactionFailure("worker_lost", version), state.executor, version))
                continue
            out.append((future, state.executor, version))
        return out

    async def _await(
        self, future: Future[list[Outcome]], executor: Executor, n: int, version: str
    ) -> list[Outcome]:
        waiter = asyncio.wrap_future(future)
        started: float | None = None
        # every item of the chunk may use its whole limit before the watchdog steps in
        backstop_s = n * self._backstop_s
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=self._poll_s)
                if done:
                    return self._outcome(waiter, executor, n, version)
                now = time.monotonic()
                if started is None and future.running():
                    started = now
                if started is not None and now - started > backstop_s:
                    waiter.cancel()
                    log.error(
                        "redaction worker stuck past %.1fs; failing its %d record(s)",
                        now - started,
                        n,
                    )
                    self._replace(executor)
                    return [RedactionFailure("timeout", version)] * n
        except asyncio.CancelledError:
            waiter.cancel()
            raise

    def _outcome(
        self, waiter: asyncio.Future[list[Outcome]], executor: Executor, n: int, version: str
    ) -> list[Outcome]:
        if waiter.cancelled():
            return [RedactionFailure("cancelled", version)] * n
        exc = waiter.exception()
        if exc is None:
            return waiter.result()
        if isinstance(exc, BrokenProcessPool):
            log.error("redaction worker process died")
            self._replace(executor)
            return [RedactionFailure("worker_lost", version)] * n
        log.error("redaction failed: %s", type(exc).__name__)
        return [RedactionFailure(f"error:{type(exc).__name__}", version)] * n

    def _replace(self, broken: Executor) -> None:
        """Swaps a broken or stuck process pool for a fresh one (threads are left alone:
        a thread cannot be killed, and its record's own deadline will stop it)."""
        if self._workers == 0 or self._closed:
            return
        with self._lock:
            if self._state.executor is broken:
                policy = self._state.policy
                self._state = _State(self._new_process_pool(policy), None, policy)
        broken.shutdown(wait=False, cancel_futures=True)
        # ProcessPoolExecutor has no public way to stop a stuck worker before Python 3.14.
        for process in list(getattr(broken, "_processes", {}).values()):
            process.terminate()

    def close(self) -> None:
        """Stops the workers; waits for records already running."""
        if self._closed:
            return
        self._closed = True
        self._state.executor.shutdown(wait=True, cancel_futures=True)
        for executor in self._retired:
            executor.shutdown(wait=True)
        self._retired.clear()


async def _failed(failure: RedactionFailure, n: int) -> list[Outcome]:
    return [failure] * n
