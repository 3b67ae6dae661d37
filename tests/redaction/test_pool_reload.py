"""RedactionPool.reload: a new policy takes over without dropping records; every outcome
carries the version that actually redacted it."""

from __future__ import annotations

import asyncio

import pytest

from redaction import (
    EngineError,
    RedactedFields,
    RedactionError,
    RedactionItem,
    RedactionPool,
)
from tests.redaction.conftest import KEY, pattern_only_policy

TEXT = "contact ops@acme-corp.com now"


def _items(n: int) -> list[RedactionItem]:
    return [RedactionItem(fields={"prefix": f"{TEXT} {i}"}, tenant="acme") for i in range(n)]


def _hashing_policy():
    return pattern_only_policy(
        description="hash e-mails",
        entities={"EMAIL_ADDRESS": {"action": "hash", "threshold": 0.5}},
    )


def test_when_reloaded_then_new_records_use_the_new_policy_and_say_so():
    old, new = pattern_only_policy(), _hashing_policy()
    pool = RedactionPool(old, key=KEY, workers=0, timeout_s=10)
    try:
        [before] = asyncio.run(pool.redact_many(_items(1)))
        pool.reload(new)
        [after] = asyncio.run(pool.redact_many(_items(1)))
    finally:
        pool.close()
    assert isinstance(before, RedactedFields) and isinstance(after, RedactedFields)
    assert before.policy_version == old.version and "<EMAIL_1>" in before.fields["prefix"]
    assert after.policy_version == new.version and "<EMAIL:" in after.fields["prefix"]
    assert pool.policy_version == new.version


def test_when_reloaded_during_a_batch_then_every_record_is_redacted_by_one_version():
    """Chunks handed out before the switch finish under the old policy; the rest use the
    new one; none is lost and each outcome names its version."""
    old, new = pattern_only_policy(), _hashing_policy()
    pool = RedactionPool(old, key=KEY, workers=0, timeout_s=10)

    async def run() -> list:
        first = asyncio.create_task(pool.redact_many(_items(200)))
        await asyncio.sleep(0)  # the first batch's chunks are handed out
        await asyncio.to_thread(pool.reload, new)
        second = await pool.redact_many(_items(50))
        return [*(await first), *second]

    try:
        outcomes = asyncio.run(run())
    finally:
        pool.close()
    assert len(outcomes) == 250 and all(isinstance(o, RedactedFields) for o in outcomes)
    for outcome in outcomes:
        hashed = "<EMAIL:" in outcome.fields["prefix"]
        assert outcome.policy_version == (new.version if hashed else old.version)
    assert {o.policy_version for o in outcomes[:200]} == {old.version}
    assert {o.policy_version for o in outcomes[200:]} == {new.version}


def test_when_same_version_reloaded_then_nothing_happens():
    policy = pattern_only_policy()
    pool = RedactionPool(policy, key=KEY, workers=0, timeout_s=10)
    try:
        state = pool._state
        pool.reload(pattern_only_policy())
        assert pool._state is state
    finally:
        pool.close()


def test_when_new_policy_cannot_start_then_old_one_stays_in_force():
    pool = RedactionPool(pattern_only_policy(), key=KEY, workers=0, timeout_s=10)
    needs_ner = pattern_only_policy(entities={"PERSON": {"action": "replace"}})
    pool._spacy_model = "no_such_spacy_model"  # the model is looked up at each (re)start
    try:
        with pytest.raises(EngineError, match="no_such_spacy_model"):
            pool.reload(needs_ner)
        assert pool.policy_version == pattern_only_policy().version
        [outcome] = asyncio.run(pool.redact_many(_items(1)))
        assert isinstance(outcome, RedactedFields)
    finally:
        pool.close()


@pytest.mark.slow
def test_when_process_pool_reloaded_then_old_workers_finish_and_new_ones_take_over():
    old, new = pattern_only_policy(), _hashing_policy()
    pool = RedactionPool(old, key=KEY, workers=1, timeout_s=30)

    async def run() -> list:
        first = asyncio.create_task(pool.redact_many(_items(64)))
        await asyncio.sleep(0)
        await asyncio.to_thread(pool.reload, new)
        return [*(await first), *(await pool.redact_many(_items(8)))]

    try:
        outcomes = asyncio.run(run())
    finally:
        pool.close()
    assert len(outcomes) == 72 and all(isinstance(o, RedactedFields) for o in outcomes)
    assert {o.policy_version for o in outcomes[:64]} == {old.version}
    assert {o.policy_version for o in outcomes[64:]} == {new.version}


def test_when_pool_closed_then_reload_refuses():
    pool = RedactionPool(pattern_only_policy(), key=KEY, workers=0, timeout_s=5)
    pool.close()
    with pytest.raises(RedactionError, match="closed"):
        pool.reload(_hashing_policy())
