"""/v1/registry: roles, errors, and promotion/rollback changing what is served (vLLM-style
upstream: the fake server implements vLLM's runtime LoRA endpoints; vLLM needs a GPU)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from redaction import AuditLog
from tests.support.fake_upstream import FakeUpstream
from trainer import ModelRegistry

LORA = "[gristmill-base-v1] "


@pytest.fixture
def vllm() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def rgw(gateway_factory, vllm):
    return gateway_factory(
        backend="openai_upstream",
        upstream_url=vllm.url,
        canary_share=0.5,
        canary_check_interval_s=0,
    )


def register(gw, name: str = "one", *, passed: bool = True) -> str:
    adapter = gw.settings.data_dir / "runs" / name / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(name.encode())
    version, _ = ModelRegistry(gw.settings.registry_dir).register(
        adapter,
        base_model_dir="/models/base",
        base_model_hash="b" * 64,
        snapshot_id="ds-x",
        snapshot_card_hash="c" * 64,
        policy_versions=["p1"],
        rules_version="r1",
        method="kto",
        training_config={},
        metrics={},
        gate={"passed": passed, "reasons": [] if passed else ["margin does not beat the base"]},
    )
    return version.id


def add_users(gw, count: int) -> list[dict[str, str]]:
    tokens = gw.runtime.tokens
    made = [tokens.create(tenant="acme", user=f"u{i}", roles=["developer"]) for i in range(count)]
    return [{"Authorization": f"Bearer {token}"} for token in made]


def served_texts(gw, users) -> list[str]:
    texts = []
    for headers in users:
        r = gw.client.post("/v1/completions", json={"prompt": "x = "}, headers=headers)
        assert r.status_code == 200, r.text
        texts.append(r.json()["choices"][0]["text"])
    return texts


def post(gw, path: str, who: str = "ml", **body):
    return gw.client.post(f"/v1/registry{path}", json=body, headers=gw.auth(who))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/versions"),
        ("GET", "/versions/v1"),
        ("GET", "/canary"),
        ("POST", "/versions/v1/promote"),
        ("POST", "/versions/v1/retire"),
        ("POST", "/rollback"),
        ("POST", "/canary/evaluate"),
    ],
)
def test_when_a_developer_calls_the_registry_then_403(rgw, method, path) -> None:
    register(rgw)
    r = rgw.client.request(method, f"/v1/registry{path}", headers=rgw.auth("dev"))
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"


def test_when_an_auditor_reads_then_allowed_but_changes_are_refused(rgw) -> None:
    register(rgw)
    for path in ("/versions", "/versions/v1", "/canary"):
        assert rgw.client.get(f"/v1/registry{path}", headers=rgw.auth("auditor")).status_code == 200
    for path in ("/versions/v1/promote", "/versions/v1/retire", "/rollback", "/canary/evaluate"):
        assert post(rgw, path, "auditor").status_code == 403
    assert ModelRegistry(rgw.settings.registry_dir).get("v1").state == "candidate"


def test_when_listed_and_shown_then_versions_lineage_and_serving_state(rgw) -> None:
    register(rgw)
    listing = rgw.client.get("/v1/registry/versions", headers=rgw.auth("ml")).json()
    assert [(v["id"], v["state"]) for v in listing["versions"]] == [("v1", "candidate")]
    assert listing["serving"]["active"] is None and listing["serving"]["canary"] is None
    assert listing["serving"]["active_model_version"] == "gristmill-base@upstream:gristmill-base"
    shown = rgw.client.get("/v1/registry/versions/v1", headers=rgw.auth("ml")).json()
    assert shown["snapshot_id"] == "ds-x" and shown["base_model_hash"] == "b" * 64
    assert shown["history"][0]["action"] == "model.register"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/versions/v9"),
        ("POST", "/versions/v9/promote"),
        ("POST", "/versions/v9/retire"),
    ],
)
def test_when_the_version_is_unknown_then_404_problem_naming_it(rgw, method, path) -> None:
    register(rgw)
    r = rgw.client.request(method, f"/v1/registry{path}", headers=rgw.auth("ml"))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert "v9" in r.json()["detail"]


def test_when_a_transition_is_not_allowed_then_409_problem_saying_why(rgw) -> None:
    register(rgw, "one")
    register(rgw, "two", passed=False)
    r = post(rgw, "/rollback")
    assert r.status_code == 409 and "nothing to roll back" in r.json()["detail"]
    r = post(rgw, "/versions/v2/promote")
    assert r.status_code == 409 and "did not pass the evaluation gate" in r.json()["detail"]
    r = post(rgw, "/versions/v2/promote", force=True)
    assert r.status_code == 409 and "reason" in r.json()["detail"]
    assert post(rgw, "/versions/v1/promote").status_code == 200
    assert post(rgw, "/versions/v1/promote").status_code == 200  # canary -> active
    r = post(rgw, "/versions/v1/retire")
    assert r.status_code == 409 and "rollback" in r.json()["detail"]
    assert r.headers["content-type"] == "application/problem+json"


def test_when_body_has_unknown_field_then_422_naming_it(rgw) -> None:
    register(rgw)
    r = post(rgw, "/versions/v1/promote", reasn="typo")
    assert r.status_code == 422 and "reasn" in r.json()["detail"]


def test_when_promoted_and_rolled_back_then_served_model_changes_without_restart(rgw, vllm) -> None:
    register(rgw)
    users = add_users(rgw, 40)
    assert not any(t.startswith("[") for t in served_texts(rgw, users))

    r = post(rgw, "/versions/v1/promote", reason="gate passed")
    assert r.status_code == 200, r.text
    assert r.json()["serving"]["canary"] == "v1"
    adapter_dir = str(rgw.settings.registry_dir / "v1" / "adapter")
    assert vllm.loras == {"gristmill-base-v1": adapter_dir}
    canary_texts = served_texts(rgw, users)
    in_canary = [t.startswith(LORA) for t in canary_texts]
    assert 5 < sum(in_canary) < 35  # about half of 40 users at share 0.5
    assert served_texts(rgw, users) == canary_texts  # sticky

    r = post(rgw, "/versions/v1/promote", reason="canary looks good")
    assert r.json()["serving"]["active"] == "v1" and r.json()["serving"]["canary"] is None
    assert all(t.startswith(LORA) for t in served_texts(rgw, users))

    r = post(rgw, "/rollback", reason="regression reported")
    assert r.status_code == 200 and r.json()["event"]["action"] == "model.rollback"
    assert not any(t.startswith("[") for t in served_texts(rgw, users))
    assert vllm.loras == {}  # the retired adapter was unloaded

    rgw.flush()
    versions = dict(
        rgw.query("SELECT model_version, count(*) FROM suggestions GROUP BY model_version")
    )
    base, canary = "gristmill-base@upstream:gristmill-base", sum(in_canary)
    # rounds: base only; canary twice (sticky check); v1 active for all; rolled back to base
    assert versions == {base: 40 + 2 * (40 - canary) + 40, f"{base}+v1": 2 * canary + 40}
    entries = [
        (e.actor, e.action, e.details["version"])
        for e in AuditLog(rgw.settings.audit_file).entries()
        if e.action.startswith("model.")
    ]
    assert entries == [
        ("api:acme/mona", "model.promote", "v1"),
        ("api:acme/mona", "model.promote", "v1"),
        ("api:acme/mona", "model.rollback", "v1"),
    ]


def test_when_the_cli_promotes_then_a_running_gateway_follows_by_polling(
    gateway_factory, vllm
) -> None:
    gw = gateway_factory(
        backend="openai_upstream", upstream_url=vllm.url, registry_poll_s=0.1,
        canary_check_interval_s=0,
    )  # fmt: skip
    register(gw)
    registry = ModelRegistry(gw.settings.registry_dir)
    registry.promote("v1", actor="cli:ops")
    registry.promote("v1", actor="cli:ops")
    deadline = time.monotonic() + 20
    while gw.runtime.models.router.routing.active != "v1" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served_texts(gw, [gw.auth("dev")]) == [LORA + "return a + b\n"]


def test_when_the_upstream_sees_the_registry_elsewhere_then_lora_path_is_mapped(
    gateway_factory, vllm, tmp_path: Path
) -> None:
    gw = gateway_factory(
        backend="openai_upstream", upstream_url=vllm.url, canary_check_interval_s=0,
        upstream_adapter_dir=Path("/mnt/registry"),
    )  # fmt: skip
    register(gw)
    assert post(gw, "/versions/v1/promote").status_code == 200
    assert vllm.loras == {"gristmill-base-v1": "/mnt/registry/v1/adapter"}
