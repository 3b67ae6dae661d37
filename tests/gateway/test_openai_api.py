"""OpenAI-compatible API through the upstream backend, with every choice recorded."""

from __future__ import annotations

import json

import openai
import pytest

BODY = {"prompt": "def add(a, b):\n    ", "suffix": "\n", "max_tokens": 8, "n": 2}


def test_when_completion_requested_then_choices_carry_suggestion_ids_and_are_recorded(gw):
    r = gw.client.post("/v1/completions", json=BODY, headers=gw.auth())
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["object"] == "text_completion"
    assert [c["suggestion_id"] for c in doc["choices"]] == [f"{doc['id']}-0", f"{doc['id']}-1"]
    gw.flush()
    rows = gw.query(
        "SELECT suggestion_id, prefix, suffix, completion, source, backend, tenant "
        "FROM suggestions ORDER BY choice_index"
    )
    assert [r[0] for r in rows] == [c["suggestion_id"] for c in doc["choices"]]
    assert rows[0][1:] == (
        "def add(a, b):\n    ",
        "\n",
        "return a + b\n",
        "openai",
        "openai_upstream",
        "acme",
    )


def test_when_upstream_gets_request_then_fim_prompt_rendered_by_gateway(gw, upstream):
    gw.client.post("/v1/completions", json={"prompt": "x = ", "suffix": "\n"}, headers=gw.auth())
    assert upstream.last_body is not None
    assert upstream.last_body["prompt"].startswith("x = ")
    assert "suffix" not in upstream.last_body  # vLLM does not take suffix


def test_when_streaming_then_sse_chunks_then_done_and_recorded(gw):
    with gw.client.stream(
        "POST", "/v1/completions", json={**BODY, "n": 1, "stream": True}, headers=gw.auth()
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == "return a + b\n"
    gw.flush()
    assert gw.query("SELECT completion FROM suggestions") == [("return a + b\n",)]


def test_when_chat_then_reply_recorded_as_chat(gw):
    r = gw.client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "How do I map keys?"}]},
        headers=gw.auth(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Use a dict."
    gw.flush()
    assert gw.query("SELECT source, completion FROM suggestions") == [("chat", "Use a dict.")]


def test_when_chat_streams_then_deltas_concatenate(gw):
    with gw.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        headers=gw.auth(),
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    chunks = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Use a dict."
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_when_models_listed_then_served_model_shown(gw):
    r = gw.client.get("/v1/models", headers=gw.auth())
    assert r.json()["data"][0]["id"] == "gristmill-base"


@pytest.mark.parametrize(
    "status,expected",
    [
        (500, 503),  # upstream broken -> service unavailable
        (400, 422),  # upstream rejects the parameters -> the client's problem, relayed
    ],
)
def test_when_upstream_fails_then_problem_json(gw, upstream, status, expected):
    upstream.fail_status = status
    try:
        r = gw.client.post("/v1/completions", json=BODY, headers=gw.auth())
    finally:
        upstream.fail_status = 0
    assert r.status_code == expected
    assert r.headers["content-type"] == "application/problem+json"
    assert "upstream" in r.json()["detail"]


def test_when_upstream_unreachable_then_503(gateway_factory):
    gw = gateway_factory(backend="openai_upstream", upstream_url="http://127.0.0.1:9/v1")
    r = gw.client.post("/v1/completions", json=BODY, headers=gw.auth())
    assert r.status_code == 503
    assert "unreachable" in r.json()["detail"]


def test_when_openai_sdk_used_then_it_works_against_a_live_gateway(live_gateway):
    """The official OpenAI Python SDK against a real uvicorn server."""
    client = openai.OpenAI(base_url=live_gateway.url + "/v1", api_key=live_gateway.tokens["dev"])
    completion = client.completions.create(
        model="gristmill-base", prompt="def add(a, b):\n    ", max_tokens=8
    )
    assert completion.choices[0].text == "return a + b\n"
    chat = client.chat.completions.create(
        model="gristmill-base", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "Use a dict."
    stream = client.completions.create(model="gristmill-base", prompt="x", stream=True)
    assert "".join(c.choices[0].text for c in stream) == "return a + b\n"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live_gateway.url + "/v1", api_key="wrong").models.list()


def test_when_client_sends_rendered_fim_prompt_then_split_into_prefix_and_suffix(gw, upstream):
    """Continue renders `<fim_prefix>…<fim_suffix>…<fim_middle>` itself and sends no suffix."""
    prompt = "<fim_prefix>def add(a, b):\n    <fim_suffix>\nprint(add(1, 2))\n<fim_middle>"
    r = gw.client.post("/v1/completions", json={"prompt": prompt}, headers=gw.auth())
    assert r.status_code == 200
    gw.flush()
    assert gw.query("SELECT prefix, suffix FROM suggestions") == [
        ("def add(a, b):\n    ", "\nprint(add(1, 2))\n")
    ]


def test_when_max_tokens_over_limit_then_clamped(gw, upstream):
    r = gw.client.post(
        "/v1/completions", json={"prompt": "x", "max_tokens": 4096}, headers=gw.auth()
    )
    assert r.status_code == 200
    assert upstream.last_body["max_tokens"] == gw.settings.max_tokens_limit
