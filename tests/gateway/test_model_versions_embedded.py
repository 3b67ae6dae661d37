"""Model versions on the embedded backend: real PEFT LoRA adapters on the tiny model,
hot-loaded next to the base, chosen per request, unloaded when retired."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from gateway.backends import CompletionRequest
from gateway.backends.embedded import EmbeddedBackend
from gateway.errors import BackendUnavailable
from tests.gateway.adapters import make_adapter, register_adapter
from tests.gateway.test_registry_api import post
from trainer import ModelRegistry

PROMPT = {"prompt": "def add(a, b):\n", "max_tokens": 10}


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(tiny_model_dir, root / f"a{seed}", seed=seed) for seed in (1, 2)]


@pytest.fixture
def egw(gateway_factory, tiny_model_dir):
    return gateway_factory(
        backend="embedded",
        model_dir=tiny_model_dir,
        canary_check_interval_s=0,
        canary_share=0.0,  # canaries go to nobody here: only promotion changes what is served
    )


def served(gw, who: str = "dev") -> tuple[str, str]:
    r = gw.client.post("/v1/completions", json=PROMPT, headers=gw.auth(who))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"], r.json()["system_fingerprint"]


def test_when_promoted_and_rolled_back_then_the_embedded_model_changes_without_restart(
    egw, adapters, tiny_model_dir
) -> None:
    registry = ModelRegistry(egw.settings.registry_dir)
    for adapter in adapters:
        register_adapter(registry, adapter, tiny_model_dir)
    backend = egw.runtime.backend
    base_text, base_version = served(egw)
    assert "+" not in base_version

    for step in ("canary", "active"):
        assert post(egw, "/versions/v1/promote").status_code == 200, step
    v1_text, v1_version = served(egw)
    assert v1_version == f"{base_version}+v1" and v1_text != base_text
    assert backend.adapters() == ["v1"]

    post(egw, "/versions/v2/promote")
    post(egw, "/versions/v2/promote")
    v2_text, v2_version = served(egw)
    assert v2_version == f"{base_version}+v2" and v2_text not in (base_text, v1_text)
    assert backend.adapters() == ["v2"]  # v1 was retired and unloaded

    assert post(egw, "/rollback").status_code == 200  # back to v1
    assert served(egw) == (v1_text, f"{base_version}+v1")
    assert backend.adapters() == ["v1"]
    assert post(egw, "/rollback").status_code == 200  # back to the base
    assert served(egw) == (base_text, base_version)
    assert backend.adapters() == []

    egw.flush()
    recorded = [row[0] for row in egw.query("SELECT model_version FROM suggestions")]
    assert sorted(set(recorded)) == sorted(
        {base_version, f"{base_version}+v1", f"{base_version}+v2"}
    )


def test_when_streamed_then_the_chunks_and_the_record_carry_the_adapter(
    egw, adapters, tiny_model_dir
) -> None:
    register_adapter(ModelRegistry(egw.settings.registry_dir), adapters[0], tiny_model_dir)
    post(egw, "/versions/v1/promote")
    post(egw, "/versions/v1/promote")
    plain_text, version = served(egw)
    with egw.client.stream(
        "POST", "/v1/completions", json={**PROMPT, "stream": True}, headers=egw.auth()
    ) as r:
        pieces = [
            json.loads(line[6:])["choices"][0]["text"]
            for line in r.iter_lines()
            if line.startswith("data: {")
        ]
    assert "".join(pieces) == plain_text
    egw.flush()
    assert {row[0] for row in egw.query("SELECT model_version FROM suggestions")} == {version}


def test_when_the_adapter_was_trained_on_another_base_then_it_is_not_served(
    egw, adapters, tiny_model_dir
) -> None:
    registry = ModelRegistry(egw.settings.registry_dir)
    register_adapter(registry, adapters[0], tiny_model_dir, base_hash="0" * 64)
    base = served(egw)
    post(egw, "/versions/v1/promote")
    r = post(egw, "/versions/v1/promote")
    assert r.json()["serving"]["active"] is None
    assert "trained on base model 000000000000" in r.json()["serving"]["errors"]["v1"]
    assert served(egw) == base
    metrics = egw.runtime.metrics
    assert metrics.get("gristmill_model_load_failures_total") >= 1


def test_when_requests_for_different_adapters_interleave_then_none_disturbs_another(
    tiny_model_dir, adapters
) -> None:
    async def scenario() -> tuple[dict, list]:
        backend = EmbeddedBackend(tiny_model_dir, model_name="gm")
        await backend.start()
        try:
            await backend.load_adapter("v1", adapters[0])
            await backend.load_adapter("v2", adapters[1])
            names = [None, "v1", "v2"]
            prompts = alone_prompts()

            def req(name, prompt):
                return CompletionRequest(prefix=prompt, max_tokens=8, model=name)

            alone = {
                (n, p): (await backend.complete(req(n, p))).choices[0].text
                for n in names
                for p in prompts
            }

            async def streamed(n, p):
                return "".join([d.text async for d in backend.stream(req(n, p))])

            jobs = []
            for round_ in range(2):
                for i, (n, p) in enumerate((n, p) for n in names for p in prompts):
                    if (i + round_) % 2:
                        jobs.append(backend.complete(req(n, p)))
                    else:
                        jobs.append(streamed(n, p))
            together = await asyncio.gather(*jobs)
            texts = [t if isinstance(t, str) else t.choices[0].text for t in together]
            return alone, texts
        finally:
            await backend.close()

    alone, together = asyncio.run(scenario())
    expected = [alone[(n, p)] for n in (None, "v1", "v2") for p in alone_prompts()] * 2
    assert together == expected
    assert len({alone[(n, "def add(a, b):\n")] for n in (None, "v1", "v2")}) == 3


def alone_prompts() -> list[str]:
    return ["def add(a, b):\n", "class Stack:\n"]


def test_when_an_unloaded_adapter_is_asked_for_then_503_names_it(tiny_model_dir, adapters):
    async def scenario() -> None:
        backend = EmbeddedBackend(tiny_model_dir, model_name="gm")
        await backend.start()
        try:
            await backend.load_adapter("v1", adapters[0])
            await backend.load_adapter("v1", adapters[0])  # idempotent
            await backend.unload_adapter("v1")
            await backend.unload_adapter("v1")  # idempotent
            with pytest.raises(BackendUnavailable, match="v1 is not loaded"):
                await backend.complete(CompletionRequest(prefix="x", max_tokens=2, model="v1"))
            with pytest.raises(BackendUnavailable, match="is not a PEFT adapter directory"):
                await backend.load_adapter("v2", tiny_model_dir)
        finally:
            await backend.close()

    asyncio.run(scenario())
