"""Native telemetry: batches, idempotency, orphans, and bad input that harms nothing."""

from __future__ import annotations

import pytest


def _serve(gw) -> str:
    r = gw.client.post("/v1/completions", json={"prompt": "x = "}, headers=gw.auth())
    return r.json()["choices"][0]["suggestion_id"]


def _events(sid: str) -> list[dict]:
    return [
        {"event_id": "e1", "suggestion_id": sid, "type": "shown"},
        {
            "event_id": "e2",
            "suggestion_id": sid,
            "type": "accepted",
            "accept_kind": "line",
            "accepted_text": "return a + b",
        },
        {"event_id": "e3", "suggestion_id": sid, "type": "edited", "final_text": "return a - b\n"},
        {
            "event_id": "e4",
            "suggestion_id": sid,
            "type": "survived",
            "window_s": 300,
            "final_text": "return a - b\n",
        },
    ]


def test_when_batch_posted_then_202_and_every_event_lands(gw):
    sid = _serve(gw)
    r = gw.client.post("/v1/telemetry/events", json={"events": _events(sid)}, headers=gw.auth())
    assert r.status_code == 202
    assert r.json() == {"stored": 4, "quarantined": 0, "dropped": 0}
    gw.flush()
    rows = gw.query(
        "SELECT event_id, type, accept_kind, window_s, orphan FROM events ORDER BY event_id"
    )
    assert rows == [
        ("e1", "shown", None, None, False),
        ("e2", "accepted", "line", None, False),
        ("e3", "edited", None, None, False),
        ("e4", "survived", None, 300.0, False),
    ]


def test_when_batch_retried_then_each_event_id_lands_once(gw):
    sid = _serve(gw)
    for _ in range(3):
        gw.client.post("/v1/telemetry/events", json={"events": _events(sid)}, headers=gw.auth())
    gw.flush()
    assert gw.query("SELECT count(*), count(DISTINCT event_id) FROM events") == [(4, 4)]


def test_when_event_names_unknown_suggestion_then_kept_as_orphan(gw):
    body = {"events": [{"event_id": "o1", "suggestion_id": "cmpl-nope-0", "type": "shown"}]}
    assert gw.client.post("/v1/telemetry/events", json=body, headers=gw.auth()).status_code == 202
    gw.flush()
    assert gw.query("SELECT event_id, orphan FROM events") == [("o1", True)]


def test_when_other_tenant_reports_on_a_suggestion_then_it_does_not_attach(gw):
    sid = _serve(gw)
    body = {"events": [{"event_id": "x1", "suggestion_id": sid, "type": "accepted"}]}
    gw.client.post("/v1/telemetry/events", json=body, headers=gw.auth("other"))
    gw.flush()
    assert gw.query("SELECT tenant, orphan FROM events") == [("globex", True)]


@pytest.mark.parametrize(
    "event,field",
    [
        ({"event_id": "b1", "suggestion_id": "s", "type": "liked"}, "type"),  # unknown type
        (
            {"event_id": "b2", "suggestion_id": "s", "type": "edited"},
            "final_text",
        ),  # edit without text
        (
            {"event_id": "b3", "suggestion_id": "s", "type": "survived", "final_text": "x"},
            "window_s",
        ),
        (
            {"event_id": "b4", "suggestion_id": "s", "type": "shown", "elapsed_ms": "soon"},
            "elapsed_ms",
        ),
        ({"suggestion_id": "s", "type": "shown"}, "event_id"),  # missing idempotency key
        (
            {"event_id": "b6", "suggestion_id": "s", "type": "shown", "ts": "2026-01-01T00:00:00"},
            "ts",
        ),
    ],
)
def test_when_event_invalid_then_422_names_field_and_batch_not_stored(gw, event, field):
    good = {"event_id": "good", "suggestion_id": "s", "type": "shown"}
    r = gw.client.post("/v1/telemetry/events", json={"events": [good, event]}, headers=gw.auth())
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert field in doc["detail"] or any(
        field in ".".join(e["loc"]) + e["msg"] for e in doc["errors"]
    )
    gw.flush()
    assert gw.query("SELECT count(*) FROM events") == [(0,)]


def test_when_problem_returned_then_shape_is_pinned(gw):
    r = gw.client.post("/v1/telemetry/events", json={"events": []}, headers=gw.auth())
    doc = r.json()
    assert set(doc) == {"type", "title", "status", "detail", "errors"}
    assert doc["status"] == 422 and doc["type"] == "about:blank"
    assert doc["errors"][0]["loc"] == ["body", "events"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"events": [',  # truncated JSON
        b'\xff\xfe{"events": []}',  # not UTF-8
        b"[1, 2",  # garbage
    ],
)
def test_when_body_malformed_then_400_and_earlier_data_intact(gw, raw):
    sid = _serve(gw)
    gw.client.post("/v1/telemetry/events", json={"events": _events(sid)}, headers=gw.auth())
    r = gw.client.post(
        "/v1/telemetry/events",
        content=raw,
        headers={**gw.auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    gw.flush()
    assert gw.query("SELECT count(*) FROM events") == [(4,)]


def test_when_body_oversize_then_413(gateway_factory, upstream):
    gw = gateway_factory(backend="openai_upstream", upstream_url=upstream.url, max_body_bytes=4096)
    big = {
        "events": [
            {"event_id": "big", "suggestion_id": "s", "type": "edited", "final_text": "x" * 10_000}
        ]
    }
    r = gw.client.post("/v1/telemetry/events", json=big, headers=gw.auth())
    assert r.status_code == 413
    assert "max_body_bytes" in r.json()["detail"]
