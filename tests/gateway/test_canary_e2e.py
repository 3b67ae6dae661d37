"""Canary analysis end to end: real completions and telemetry through HTTP, the feedback
store's counts per model version, the z-test, and the registry change it makes (the upstream
is the fake vLLM-style server; vLLM needs a GPU)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from redaction import AuditLog
from tests.gateway.test_registry_api import add_users, post, register
from tests.support.fake_upstream import FakeUpstream
from trainer import ModelRegistry


@pytest.fixture
def vllm() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def canary_gateway(gateway_factory, vllm, **overrides):
    values = {
        "backend": "openai_upstream",
        "upstream_url": vllm.url,
        "canary_share": 0.5,
        "canary_min_shown": 10,
        "canary_check_interval_s": 0,
    }
    values.update(overrides)
    gw = gateway_factory(**values)
    register(gw)
    assert post(gw, "/versions/v1/promote").status_code == 200  # candidate -> canary
    return gw


def use(gw, users, *, canary_accepts: bool) -> int:
    """Each user completes once and reacts; returns how many users were in the canary arm."""
    in_canary = 0
    for i, headers in enumerate(users):
        choice = gw.client.post("/v1/completions", json={"prompt": "x = "}, headers=headers)
        choice = choice.json()["choices"][0]
        canary = choice["text"].startswith("[gristmill-base-v1] ")
        in_canary += canary
        accepted = canary == canary_accepts
        sid = choice["suggestion_id"]
        outcome = {"type": "accepted", "accept_kind": "full"} if accepted else {"type": "rejected"}
        r = gw.client.post(
            "/v1/telemetry/events",
            json={
                "events": [
                    {"event_id": f"s{i}", "suggestion_id": sid, "type": "shown"},
                    {"event_id": f"o{i}", "suggestion_id": sid, **outcome},
                ]
            },
            headers=headers,
        )
        assert r.status_code == 202, r.text
    gw.flush()
    return in_canary


def canary_audit(gw) -> list:
    return [e for e in AuditLog(gw.settings.audit_file).entries() if e.actor == "gristmill:canary"]


def test_when_the_canary_is_accepted_more_then_it_is_promoted_and_audited(
    gateway_factory, vllm
) -> None:
    gw = canary_gateway(gateway_factory, vllm)
    users = add_users(gw, 60)
    in_canary = use(gw, users, canary_accepts=True)

    status = gw.client.get("/v1/registry/canary", headers=gw.auth("auditor")).json()
    assert status["action"] == "promote" and not status["applied"]
    assert status["canary"]["version"] == "v1"
    assert (status["canary"]["shown"], status["canary"]["accepted"]) == (in_canary, in_canary)
    assert (status["active"]["shown"], status["active"]["accepted"]) == (60 - in_canary, 0)
    assert status["active"]["version"] is None  # the base model is the active arm
    assert status["z"] > status["critical_z"] == pytest.approx(1.959964, abs=1e-6)

    r = post(gw, "/canary/evaluate")
    assert r.status_code == 200 and r.json()["applied"]
    assert ModelRegistry(gw.settings.registry_dir).active().id == "v1"
    assert r.json()["serving"]["active"] == "v1" and r.json()["serving"]["canary"] is None
    [entry] = canary_audit(gw)
    assert entry.action == "model.promote" and entry.details["decision"] == "auto-promote"
    assert entry.details["canary_analysis"]["canary"]["shown"] == in_canary
    assert entry.details["canary_analysis"]["z"] == pytest.approx(status["z"])


def test_when_the_canary_is_rejected_more_then_it_is_rolled_back_and_unloaded(
    gateway_factory, vllm
) -> None:
    gw = canary_gateway(gateway_factory, vllm)
    users = add_users(gw, 60)
    use(gw, users, canary_accepts=False)

    r = post(gw, "/canary/evaluate")
    assert r.json()["action"] == "rollback" and r.json()["applied"]
    assert ModelRegistry(gw.settings.registry_dir).get("v1").state == "retired"
    assert vllm.loras == {}
    [entry] = canary_audit(gw)
    assert entry.action == "model.retire" and entry.details["decision"] == "auto-rollback"
    texts = [
        gw.client.post("/v1/completions", json={"prompt": "x"}, headers=h).json()["choices"][0]
        for h in users[:10]
    ]
    assert not any(t["text"].startswith("[") for t in texts)


def test_when_too_few_were_shown_then_the_canary_keeps_running(gateway_factory, vllm) -> None:
    gw = canary_gateway(gateway_factory, vllm, canary_min_shown=500)
    use(gw, add_users(gw, 20), canary_accepts=True)
    r = post(gw, "/canary/evaluate").json()
    assert r["action"] == "wait" and not r["applied"] and "collecting" in r["reason"]
    assert ModelRegistry(gw.settings.registry_dir).canary().id == "v1"
    assert canary_audit(gw) == []


def test_when_no_canary_then_status_says_so(gateway_factory, vllm) -> None:
    gw = gateway_factory(backend="openai_upstream", upstream_url=vllm.url)
    r = gw.client.get("/v1/registry/canary", headers=gw.auth("ml")).json()
    assert r["action"] == "none" and r["canary"] is None


def test_when_the_periodic_check_is_on_then_the_gateway_decides_by_itself(
    gateway_factory, vllm
) -> None:
    gw = canary_gateway(gateway_factory, vllm, canary_check_interval_s=0.2)
    use(gw, add_users(gw, 60), canary_accepts=True)
    registry = ModelRegistry(gw.settings.registry_dir)
    deadline = time.monotonic() + 30
    while registry.get("v1").state != "active" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert registry.get("v1").state == "active"
    assert [e.details["decision"] for e in canary_audit(gw)] == ["auto-promote"]
