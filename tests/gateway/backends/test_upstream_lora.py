"""vLLM runtime LoRA endpoints, exercised against the fake OpenAI-compatible server.

vLLM itself needs a GPU we do not have; tests/support/fake_upstream.py answers
/v1/load_lora_adapter and /v1/unload_lora_adapter with vLLM's bodies and status codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.backends import CompletionRequest
from gateway.backends.upstream import OpenAIUpstreamBackend
from gateway.errors import BackendUnavailable
from tests.support.fake_upstream import FakeUpstream


@pytest.fixture
def vllm() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def run(coro):
    return asyncio.run(coro)


async def _with_backend(server: FakeUpstream, body):
    backend = OpenAIUpstreamBackend(server.url, model_name="gm", upstream_model="base-7b")
    await backend.start()
    try:
        return await body(backend)
    finally:
        await backend.close()


def test_when_adapter_loaded_then_vllm_gets_name_and_path_and_requests_select_it(vllm) -> None:
    async def body(backend):
        await backend.load_adapter("v3", Path("/registry/v3/adapter"))
        lora = await backend.complete(CompletionRequest(prefix="x = ", model="v3"))
        sent_lora = dict(vllm.last_body or {})
        base = await backend.complete(CompletionRequest(prefix="x = "))
        return lora, sent_lora, base, dict(vllm.last_body or {})

    lora, sent_lora, base, sent_base = run(_with_backend(vllm, body))
    assert vllm.lora_calls == [
        ("load", {"lora_name": "gm-v3", "lora_path": "/registry/v3/adapter"})
    ]
    assert sent_lora["model"] == "gm-v3" and sent_base["model"] == "base-7b"
    assert lora.choices[0].text.startswith("[gm-v3] ")
    assert lora.model_version == "gm@upstream:base-7b+v3"
    assert base.model_version == "gm@upstream:base-7b"
    assert not base.choices[0].text.startswith("[")


def test_when_adapter_unloaded_then_vllm_drops_it_and_requests_for_it_fail(vllm) -> None:
    async def body(backend):
        await backend.load_adapter("v3", Path("/registry/v3/adapter"))
        await backend.unload_adapter("v3")
        with pytest.raises(BackendUnavailable, match="v3 is not loaded"):
            await backend.complete(CompletionRequest(prefix="x = ", model="v3"))
        return backend.adapters()

    assert run(_with_backend(vllm, body)) == []
    assert vllm.loras == {}
    assert [call for call, _ in vllm.lora_calls] == ["load", "unload"]
    assert vllm.lora_calls[1][1] == {"lora_name": "gm-v3"}


def test_when_vllm_already_has_or_lacks_the_adapter_then_load_and_unload_are_idempotent(
    vllm,
) -> None:
    # another gateway replica loaded it first / vLLM restarted and forgot it
    vllm.loras["gm-v4"] = "/registry/v4/adapter"

    async def body(backend):
        await backend.load_adapter("v4", Path("/registry/v4/adapter"))
        loaded = backend.adapters()
        await backend.unload_adapter("v9")
        return loaded

    assert run(_with_backend(vllm, body)) == ["v4"]


def test_when_vllm_refuses_the_adapter_then_error_names_it(vllm) -> None:
    vllm.fail_status = 500

    async def body(backend):
        with pytest.raises(BackendUnavailable, match=r"adapter v5: upstream refused to load gm-v5"):
            await backend.load_adapter("v5", Path("/registry/v5/adapter"))
        return backend.adapters()

    assert run(_with_backend(vllm, body)) == []
