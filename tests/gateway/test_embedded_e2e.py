"""The embedded default path: a real tiny transformers model behind the gateway."""

from __future__ import annotations

import pytest


@pytest.fixture
def egw(gateway_factory, tiny_model_dir):
    return gateway_factory(backend="embedded", model_dir=tiny_model_dir, default_max_tokens=12)


def test_when_completing_at_temperature_zero_then_deterministic_and_recorded(egw):
    body = {"prompt": "def add(a, b):\n    ", "suffix": "\n\nprint(add(1, 2))\n", "max_tokens": 12}
    first = egw.client.post("/v1/completions", json=body, headers=egw.auth())
    second = egw.client.post("/v1/completions", json=body, headers=egw.auth())
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
    egw.flush()
    rows = egw.query("SELECT backend, model_version, prompt_template FROM suggestions")
    assert len(rows) == 2
    backend, version, template = rows[0]
    assert backend == "embedded"
    assert version.startswith("gristmill-base@")
    assert template == "qwen-fim-v1"


def test_when_tabby_completion_then_served_by_local_model(egw):
    r = egw.client.post(
        "/tabby/v1/completions",
        json={
            "language": "python",
            "segments": {"prefix": "import os\n\n\ndef main():\n    ", "suffix": ""},
        },
        headers=egw.auth(),
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["choices"][0]["text"], str)
    health = egw.client.get("/tabby/v1/health", headers=egw.auth()).json()
    assert health["device"] in ("cpu", "cuda")
    assert health["cpu_count"] >= 1


def test_when_streaming_from_embedded_then_same_text_as_non_streaming(egw):
    import json

    body = {"prompt": "class Stack:\n    def __init__(self):\n        ", "max_tokens": 10}
    plain = egw.client.post("/v1/completions", json=body, headers=egw.auth()).json()
    with egw.client.stream(
        "POST", "/v1/completions", json={**body, "stream": True}, headers=egw.auth()
    ) as r:
        chunks = [json.loads(ln[6:]) for ln in r.iter_lines() if ln.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == plain["choices"][0]["text"]


def test_when_model_dir_missing_then_start_up_fails_naming_it(tmp_path):
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from gateway.errors import BackendUnavailable
    from tests.conftest import make_settings

    settings = make_settings(tmp_path / "d", backend="embedded", model_dir=tmp_path / "nope")
    with pytest.raises(BackendUnavailable, match="nope"):
        with TestClient(create_app(settings)):
            pass
