"""Continue's dev-data destination."""

from __future__ import annotations

AUTOCOMPLETE = {
    "name": "autocomplete",
    "schema": "0.2.0",
    "level": "all",
    "profileId": "local",
    "data": {
        "accepted": True,
        "completionId": "c0ffee",
        "completion": "return a + b",
        "prefix": "def add(a, b):\n    ",
        "suffix": "\n",
        "prompt": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n<fim_middle>",
        "filepath": "file:///work/calc.py",
        "gitRepo": "https://git.example.com/acme/calc.git",
        "modelName": "gristmill-base",
        "modelProvider": "openai",
        "time": 120,
        "cacheHit": False,
        "numLines": 1,
        "timestamp": "2026-11-22T10:00:00Z",
    },
}


def test_when_autocomplete_posted_then_suggestion_and_outcome_stored(gw):
    r = gw.client.post("/continue/dev-data", json=AUTOCOMPLETE, headers=gw.auth())
    assert r.status_code == 202, r.text
    gw.flush()
    assert gw.query("SELECT suggestion_id, source, completion, model_version FROM suggestions") == [
        ("continue-c0ffee", "continue", "return a + b", "gristmill-base")
    ]
    assert gw.query("SELECT type FROM events ORDER BY type") == [("accepted",), ("shown",)]


def test_when_autocomplete_rejected_then_rejected_event(gw):
    doc = {**AUTOCOMPLETE, "data": {**AUTOCOMPLETE["data"], "accepted": False}}
    gw.client.post("/continue/dev-data", json=doc, headers=gw.auth())
    gw.flush()
    assert gw.query("SELECT type FROM events ORDER BY type") == [("rejected",), ("shown",)]


def test_when_edit_outcome_posted_then_previous_and_new_code_stored(gw):
    doc = {
        "name": "editOutcome",
        "schema": "0.2.0",
        "data": {
            "previousCode": "x = 1",
            "newCode": "x: int = 1",
            "accepted": True,
            "filepath": "a.py",
            "modelName": "m",
            "modelProvider": "openai",
        },
    }
    assert gw.client.post("/continue/dev-data", json=doc, headers=gw.auth()).status_code == 202
    gw.flush()
    assert gw.query("SELECT prefix, completion, source FROM suggestions") == [
        ("x = 1", "x: int = 1", "continue_edit")
    ]


def test_when_other_event_name_then_acknowledged_counted_not_stored(gw):
    doc = {"name": "chatFeedback", "schema": "0.2.0", "data": {"feedback": True}}
    r = gw.client.post("/continue/dev-data", json=doc, headers=gw.auth())
    assert r.status_code == 202
    assert r.json()["ignored"] == 1
    metrics = gw.client.get("/metrics").text
    assert 'gristmill_continue_events_ignored_total{event="chatFeedback"} 1' in metrics
    gw.flush()
    assert gw.query("SELECT count(*) FROM suggestions") == [(0,)]


def test_when_autocomplete_lacks_completion_then_422_names_field(gw):
    data = {k: v for k, v in AUTOCOMPLETE["data"].items() if k != "completion"}
    r = gw.client.post("/continue/dev-data", json={**AUTOCOMPLETE, "data": data}, headers=gw.auth())
    assert r.status_code == 422
    assert "completion" in r.json()["detail"]
