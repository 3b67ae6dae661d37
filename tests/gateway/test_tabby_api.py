"""Tabby-compatible API under /tabby: the shapes Tabby's IDE extensions rely on."""

from __future__ import annotations

import pytest

COMPLETION = {
    "language": "python",
    "segments": {
        "prefix": "def add(a, b):\n    ",
        "suffix": "\n",
        "filepath": "src/calc.py",
        "git_url": "https://git.example.com/acme/calc.git",
        "declarations": [{"filepath": "src/util.py", "body": "def helper():\n    pass"}],
    },
}


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_when_health_requested_then_tabby_health_state_shape(gw, method):
    r = gw.client.request(method, "/tabby/v1/health", headers=gw.auth())
    assert r.status_code == 200
    doc = r.json()
    for key in ("model", "device", "arch", "cpu_info", "cpu_count", "cuda_devices", "version"):
        assert key in doc
    assert set(doc["version"]) >= {"build_date", "git_sha", "git_describe"}


def test_when_server_setting_requested_then_client_telemetry_disabled(gw):
    r = gw.client.get("/tabby/v1beta/server_setting", headers=gw.auth())
    assert r.json() == {"disable_client_side_telemetry": True}


def test_when_completion_requested_then_id_and_choices_and_context_in_prompt(gw, upstream):
    r = gw.client.post("/tabby/v1/completions", json=COMPLETION, headers=gw.auth())
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"].startswith("cmpl-")
    assert doc["choices"] == [{"index": 0, "text": "return a + b\n"}]
    assert "# Path: src/util.py" in upstream.last_body["prompt"]
    gw.flush()
    rows = gw.query("SELECT source, language, file_path, repo FROM suggestions")
    assert rows == [("tabby", "python", "src/calc.py", "https://git.example.com/acme/calc.git")]


@pytest.mark.parametrize(
    "event,query,expected_type,expected_kind",
    [
        ({"type": "view"}, "", "shown", None),  # the suggestion was displayed
        ({"type": "select"}, "", "accepted", "full"),  # Tab: the whole suggestion
        ({"type": "select", "select_kind": "line"}, "", "accepted", "line"),  # line accept in body
        (
            {"type": "select"},
            "?select_kind=line",
            "accepted",
            "line",
        ),  # line accept in query string
        ({"type": "dismiss"}, "", "rejected", None),  # dismissed
    ],
)
def test_when_event_posted_then_mapped_to_gristmill_event(
    gw, event, query, expected_type, expected_kind
):
    cid = gw.client.post("/tabby/v1/completions", json=COMPLETION, headers=gw.auth()).json()["id"]
    body = {"completion_id": cid, "choice_index": 0, "view_id": "view-1", "elapsed": 1200, **event}
    r = gw.client.post(f"/tabby/v1/events{query}", json=body, headers=gw.auth())
    assert r.status_code == 200, r.text
    gw.flush()
    rows = gw.query("SELECT type, accept_kind, suggestion_id, elapsed_ms, orphan FROM events")
    assert rows == [(expected_type, expected_kind, f"{cid}-0", 1200.0, False)]


def test_when_event_type_unknown_then_400(gw):
    r = gw.client.post(
        "/tabby/v1/events", json={"type": "hover", "completion_id": "cmpl-x"}, headers=gw.auth()
    )
    assert r.status_code == 400
    assert "type" in r.json()["detail"]


def test_when_same_view_event_sent_twice_then_stored_once(gw):
    cid = gw.client.post("/tabby/v1/completions", json=COMPLETION, headers=gw.auth()).json()["id"]
    body = {"type": "view", "completion_id": cid, "choice_index": 0, "view_id": "v9"}
    for _ in range(2):
        assert gw.client.post("/tabby/v1/events", json=body, headers=gw.auth()).status_code == 200
    gw.flush()
    assert gw.query("SELECT count(*) FROM events") == [(1,)]


def test_when_seed_outside_64_bits_then_422_not_500(gw):
    """Found by schemathesis: an out-of-range seed crashed the JSON encoder upstream."""
    body = {**COMPLETION, "seed": -(2**63) - 1}
    r = gw.client.post("/tabby/v1/completions", json=body, headers=gw.auth())
    assert r.status_code == 422
    assert "seed" in r.json()["detail"]
