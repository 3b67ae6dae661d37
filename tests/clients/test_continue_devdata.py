"""Continue's dev-data HTTP destination, fed bodies built the way Continue builds them.

Read in continuedev/continue (our own code below, not a copy):
- core/data/log.ts, DataLogger.logToOneDestination: one POST per event to `destination` with
  headers `Content-Type: application/json` and `Authorization: Bearer <apiKey>`, body
  `{name, data, schema, level, profileId}`; `addBaseValues` adds eventName, timestamp (ISO),
  schema, userAgent ("<IDE>/<version> (Continue/<version>)"), selectedProfileId and userId,
  then the zod schema of that version and level parses `data`, which drops every other key.
- packages/config-yaml/src/schemas/data/autocomplete/index.ts and v0.2.0.ts: the autocomplete
  fields (flat values; `filepath` is a file URI, `time` in ms, `accepted` optional).
- packages/config-yaml/src/schemas/data/editOutcome/index.ts and v0.2.0.ts: editOutcome; newer
  releases carry previousCode/newCode/filepath, earlier ones only prompt/completion/modelTitle.
- Level `noCode` omits prefix, suffix, prompt and completion (and previousCode/newCode).
- core/autocomplete/util/AutocompleteLoggingService.ts: an autocomplete is logged once, with
  accepted=true on accept or accepted=false when it was displayed and not taken within 10 s.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.clients.conftest import stored_rows
from tests.conftest import LiveGateway

SCHEMA = "0.2.0"
BASE_FIELDS = {"eventName", "schema", "timestamp", "userId", "userAgent", "selectedProfileId"}
AUTOCOMPLETE_FIELDS = BASE_FIELDS | {
    "disable", "useFileSuffix", "maxPromptTokens", "debounceDelay", "maxSuffixPercentage",
    "prefixPercentage", "transform", "template", "multilineCompletions",
    "slidingWindowPrefixPercentage", "slidingWindowSize", "useCache", "onlyMyCode",
    "useRecentlyEdited", "disableInFiles", "useImports", "accepted", "time", "prefix", "suffix",
    "prompt", "completion", "modelProvider", "modelName", "completionOptions", "cacheHit",
    "filepath", "gitRepo", "completionId", "uniqueId",
}  # fmt: skip
EDIT_OUTCOME_FIELDS = BASE_FIELDS | {
    "prompt", "completion", "modelName", "modelTitle", "modelProvider", "accepted",
    "previousCode", "newCode", "previousCodeLines", "newCodeLines", "lineChange", "filepath",
}  # fmt: skip
NO_CODE = {"prefix", "suffix", "prompt", "completion", "previousCode", "newCode"}
REPO = "https://git.example.com/acme/calc.git"


def continue_body(name: str, event: dict[str, Any], fields: set[str], level: str = "all") -> dict:
    """The envelope Continue POSTs: base values added, then only the schema's fields kept."""
    data = {
        **event,
        "eventName": name,
        "timestamp": "2026-11-22T10:00:00.000Z",
        "schema": SCHEMA,
        "userAgent": "Visual Studio Code/1.96.0 (Continue/1.0.0)",
        "selectedProfileId": "local",
        "userId": "",
    }
    keep = fields - NO_CODE if level == "noCode" else fields
    data = {k: v for k, v in data.items() if k in keep}
    return {"name": name, "data": data, "schema": SCHEMA, "level": level, "profileId": "local"}


def autocomplete_outcome(accepted: bool) -> dict[str, Any]:
    """An AutocompleteOutcome as Continue's CompletionProvider fills it, plus extra keys."""
    prefix = "def add(a, b):\n    "
    suffix = "\n\nprint(add(1, 2))\n"
    return {
        "disable": False, "useFileSuffix": True, "maxPromptTokens": 1024, "debounceDelay": 350,
        "maxSuffixPercentage": 0.2, "prefixPercentage": 0.3, "transform": True,
        "multilineCompletions": "auto", "slidingWindowPrefixPercentage": 0.75,
        "slidingWindowSize": 500, "useCache": True, "onlyMyCode": True,
        "useRecentlyEdited": True, "useImports": True,
        "accepted": accepted,
        "time": 184.5,
        "prefix": prefix,
        "suffix": suffix,
        "prompt": f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
        "completion": "return a + b",
        "modelProvider": "openai",
        "modelName": "gristmill",
        "cacheHit": False,
        "filepath": "file:///srv/checkouts/calc/src/calc%20ops.py",
        "gitRepo": REPO,
        "completionId": "0b9f1c52-6f0e-4bde-9a57-3f2c8e0d6a11",
        "uniqueId": "vscode-machine-id",
        "numLines": 1,  # in the outcome, not in the schema: Continue's parse drops it
        "completionOptions": {"temperature": 0.01},
    }  # fmt: skip


def post(live: LiveGateway, body: dict, token: str | None = None) -> httpx.Response:
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token or live.tokens['dev']}",
    }
    return httpx.post(f"{live.url}/continue/dev-data", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "accepted,outcome",
    [
        (True, "accepted"),  # Tab: logged at once with accepted=true
        (False, "rejected"),  # displayed, not taken within 10 s: accepted=false
    ],
)
def test_when_continue_logs_autocomplete_then_suggestion_and_outcome_stored(
    live_gateway: LiveGateway, accepted: bool, outcome: str
) -> None:
    event = autocomplete_outcome(accepted)
    r = post(live_gateway, continue_body("autocomplete", event, AUTOCOMPLETE_FIELDS))
    assert r.status_code == 202, r.text
    assert r.json() == {"stored": 3, "quarantined": 0, "dropped": 0}

    sid = f"continue-{event['completionId']}"
    rows = stored_rows(
        live_gateway,
        "SELECT source, prefix, suffix, completion, file_path, repo, model_version, backend, "
        f"latency_ms FROM suggestions WHERE suggestion_id = '{sid}'",
        count=1,
    )
    assert rows == [
        (
            "continue", event["prefix"], event["suffix"], "return a + b",
            "/srv/checkouts/calc/src/calc ops.py", REPO, "gristmill", "openai", 184.5,
        )
    ]  # fmt: skip
    events = stored_rows(
        live_gateway,
        "SELECT type, accept_kind, accepted_text FROM events "
        f"WHERE suggestion_id = '{sid}' ORDER BY type",
        count=2,
    )
    expected = ("accepted", "full", "return a + b") if accepted else ("rejected", None, None)
    assert sorted(events) == sorted([expected, ("shown", None, None)])


@pytest.mark.parametrize(
    "event,before,after,model",
    [
        (  # current Continue: the code before and after the applied edit
            {"modelProvider": "openai", "modelName": "gristmill", "modelTitle": "gristmill",
             "prompt": "Add type hints", "completion": "x: int = 1",
             "previousCode": "x = 1", "newCode": "x: int = 1", "previousCodeLines": 1,
             "newCodeLines": 1, "lineChange": 0, "accepted": True,
             "filepath": "file:///srv/checkouts/calc/a.py"},
            "x = 1", "x: int = 1", "gristmill",
        ),
        (  # earlier 0.2.0 releases: prompt and completion, the model by title
            {"modelProvider": "openai", "modelTitle": "Gristmill", "prompt": "Add type hints",
             "completion": "x: int = 1", "accepted": True},
            "Add type hints", "x: int = 1", "Gristmill",
        ),
    ],
)  # fmt: skip
def test_when_continue_logs_edit_outcome_then_before_and_after_stored(
    live_gateway: LiveGateway, event: dict, before: str, after: str, model: str
) -> None:
    r = post(live_gateway, continue_body("editOutcome", event, EDIT_OUTCOME_FIELDS))
    assert r.status_code == 202, r.text
    rows = stored_rows(
        live_gateway,
        "SELECT suggestion_id, source, prefix, completion, model_version FROM suggestions",
        count=1,
    )
    assert [row[1:] for row in rows] == [("continue_edit", before, after, model)]
    events = stored_rows(
        live_gateway,
        f"SELECT type, accepted_text FROM events WHERE suggestion_id = '{rows[0][0]}'",
        count=2,
    )
    assert sorted(events) == [("accepted", after), ("shown", None)]


def test_when_level_is_no_code_then_acknowledged_counted_and_nothing_stored(
    live_gateway: LiveGateway,
) -> None:
    body = continue_body("autocomplete", autocomplete_outcome(True), AUTOCOMPLETE_FIELDS, "noCode")
    assert "completion" not in body["data"] and "completionId" in body["data"]

    r = post(live_gateway, body)

    assert r.status_code == 202, r.text
    assert r.json()["ignored"] == 1
    metrics = httpx.get(f"{live_gateway.url}/metrics", timeout=30).text
    assert 'gristmill_continue_nocode_events_total{event="autocomplete"} 1' in metrics
    assert stored_rows(live_gateway, "SELECT suggestion_id FROM suggestions", count=0) == []


def test_when_continue_has_no_api_key_then_401_and_nothing_stored(
    live_gateway: LiveGateway,
) -> None:
    # Without `apiKey` Continue sends its own hub access token, which is no Gristmill token.
    body = continue_body("autocomplete", autocomplete_outcome(True), AUTOCOMPLETE_FIELDS)
    r = post(live_gateway, body, token="undefined")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert stored_rows(live_gateway, "SELECT suggestion_id FROM suggestions", count=0) == []


# The model block of the README's config.yaml, as Continue's OpenAI provider turns it into
# requests (core/llm/llms/OpenAI.ts: _convertArgs, _legacystreamComplete, _streamChat).
MAX_TOKENS = 512  # defaultCompletionOptions.maxTokens; Continue's own default is 4096
MAX_STOP_WORDS = 4  # maxStopWords; Continue's autocomplete sends 7 or more stop words
AUTOCOMPLETE_STOPS = [
    "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>",
    "</fim_middle>", "</code>", "\n\n",
]  # fmt: skip


def _sse_texts(response: httpx.Response, chat: bool) -> str:
    """What Continue's streamSse yields: `data:` lines until [DONE]."""
    text = ""
    for line in response.iter_lines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        choice = json.loads(line[len("data: ") :])["choices"][0]
        text += (choice["delta"].get("content") or "") if chat else (choice.get("text") or "")
    return text


def _continue_openai_body(max_tokens: int, stops: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gristmill-base", "max_tokens": max_tokens, "temperature": 0.01,
        "stream": True,
    }  # fmt: skip
    if stops is not None:
        body["stop"] = stops
    return body


def test_when_continue_uses_readme_model_config_then_autocomplete_and_chat_stream(
    live_gateway: LiveGateway,
) -> None:
    headers = {"Authorization": f"Bearer {live_gateway.tokens['dev']}"}
    autocomplete = {
        **_continue_openai_body(MAX_TOKENS, AUTOCOMPLETE_STOPS[:MAX_STOP_WORDS]),
        "prompt": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n<fim_middle>",
    }
    with httpx.stream(
        "POST", f"{live_gateway.url}/v1/completions", json=autocomplete, headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200, r.read()
        assert _sse_texts(r, chat=False) == "return a + b\n"

    chat = {
        **_continue_openai_body(MAX_TOKENS, None),
        "messages": [
            {"role": "system", "content": "You are a helpful coding assistant."},
            {"role": "user", "content": "How do I count words in Python?"},
        ],
    }
    with httpx.stream(
        "POST", f"{live_gateway.url}/v1/chat/completions", json=chat, headers=headers, timeout=30
    ) as r:
        assert r.status_code == 200, r.read()
        assert _sse_texts(r, chat=True) == "Use a dict."


@pytest.mark.parametrize(
    "max_tokens,stops",
    [
        (4096, AUTOCOMPLETE_STOPS[:MAX_STOP_WORDS]),  # Continue's default maxTokens: clamped
        (MAX_TOKENS, AUTOCOMPLETE_STOPS),  # Continue's full stop-word list: accepted
    ],
)
def test_when_continue_model_config_keeps_its_defaults_then_served(
    live_gateway: LiveGateway, max_tokens: int, stops: list[str]
) -> None:
    body = {**_continue_openai_body(max_tokens, stops), "prompt": "def add(a, b):\n    "}
    body["stream"] = False
    r = httpx.post(
        f"{live_gateway.url}/v1/completions",
        json=body,
        headers={"Authorization": f"Bearer {live_gateway.tokens['dev']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == "return a + b\n"
