"""RedactionPool: in a thread (workers=0) or in processes (workers>0); fail closed."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import pytest

from redaction import (
    RedactedFields,
    RedactionError,
    RedactionFailure,
    RedactionItem,
    RedactionPool,
)
from tests.redaction.conftest import KEY, pattern_only_policy


def _items(fakes) -> tuple[list[RedactionItem], str]:
    token = "ghp_" + fakes.chars(36)
    return [
        RedactionItem(
            fields={"prefix": f'GH = "{token}"\n# by Hannah Schmidt\n', "completion": None},
            file_path="src/app.py",
            repo="acme/web",
            tenant="t1",
        ),
        RedactionItem(fields={"prefix": "A=1"}, file_path="deploy/.env"),
    ], token


def _check(outcomes, token: str) -> None:
    first, dropped = outcomes
    assert isinstance(first, RedactedFields)
    assert first.fields == {
        "prefix": 'GH = "<GITHUB_TOKEN_1>"\n# by <PERSON_1>\n',
        "completion": None,
    }
    assert token not in repr(first)
    assert dropped is None


def test_when_workers_zero_then_redacts_in_a_thread(default_policy, fakes):
    pool = RedactionPool(default_policy, key=KEY, workers=0, timeout_s=30)
    try:
        items, token = _items(fakes)
        _check(asyncio.run(pool.redact_many(items)), token)
        assert pool.policy_version == default_policy.version
    finally:
        pool.close()


@pytest.mark.slow
def test_when_workers_one_then_redacts_in_a_process(default_policy, fakes):
    pool = RedactionPool(default_policy, key=KEY, workers=1, timeout_s=60)
    try:
        items, token = _items(fakes)
        _check(asyncio.run(pool.redact_many(items)), token)
        # a second batch reuses the same worker (and its loaded engine)
        _check(asyncio.run(pool.redact_many(items)), token)
    finally:
        pool.close()


def test_when_record_exceeds_time_limit_then_failure_not_exception():
    pool = RedactionPool(pattern_only_policy(), key=KEY, workers=0, timeout_s=1e-6)
    try:
        big = "x = 'a@b.org'  # mail me\n" * 20000
        outcomes = asyncio.run(
            pool.redact_many(
                [
                    RedactionItem(fields={"prefix": big}, file_path="big.py"),
                    RedactionItem(fields={"prefix": big}, file_path="x/secrets/big.py"),
                ]
            )
        )
        # the path rule drops the second record before any time is spent on its text
        assert outcomes == [RedactionFailure("timeout"), None]
    finally:
        pool.close()


def test_when_redaction_raises_then_content_free_failure():
    pool = RedactionPool(pattern_only_policy(), key=KEY, workers=0, timeout_s=5)
    try:
        bad = RedactionItem(fields={"prefix": b"raw bytes, not text: hunter2"})  # type: ignore[dict-item]
        good = RedactionItem(fields={"prefix": "ok = 1"})
        outcomes = asyncio.run(pool.redact_many([bad, good]))
        assert isinstance(outcomes[0], RedactionFailure)
        assert outcomes[0].reason.startswith("error:")
        assert "hunter2" not in outcomes[0].reason
        assert isinstance(outcomes[1], RedactedFields)
    finally:
        pool.close()


def test_when_worker_hangs_in_native_code_then_watchdog_fails_the_record():
    """A hang inside native code (which no deadline check can interrupt) cannot be produced
    on purpose with the real engine, so the pool's Redactor is replaced by one that blocks:
    a stand-in at the one boundary the tests cannot reach."""
    pool = RedactionPool(pattern_only_policy(), key=KEY, workers=0, timeout_s=0.1)
    release = threading.Event()

    class Hung:
        def redact(self, *args, **kwargs):
            release.wait(30)
            return None

    pool._state = dataclasses.replace(pool._state, redactor=Hung())  # type: ignore[arg-type]
    try:
        outcomes = asyncio.run(pool.redact_many([RedactionItem(fields={"prefix": "x"})]))
        assert outcomes == [RedactionFailure("timeout")]
    finally:
        release.set()
        pool.close()


def test_when_pool_closed_then_redact_many_refuses():
    pool = RedactionPool(pattern_only_policy(), key=KEY, workers=0, timeout_s=5)
    pool.close()
    with pytest.raises(RedactionError):
        asyncio.run(pool.redact_many([RedactionItem(fields={"prefix": "x"})]))


@pytest.mark.parametrize("workers,timeout_s", [(-1, 1.0), (0, 0.0)])
def test_when_sizes_invalid_then_refused(workers, timeout_s):
    with pytest.raises(ValueError):
        RedactionPool(pattern_only_policy(), key=KEY, workers=workers, timeout_s=timeout_s)
