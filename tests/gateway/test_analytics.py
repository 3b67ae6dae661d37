"""Acceptance analytics: numbers per group, roles, tenant isolation."""

from __future__ import annotations

import pytest


def _history(gw, who: str, accept: int, reject: int) -> None:
    events = []
    for i in range(accept + reject):
        body = {"prompt": f"v{i} = ", "gristmill": {"language": "python"}}
        sid = gw.client.post("/v1/completions", json=body, headers=gw.auth(who)).json()["choices"][
            0
        ]["suggestion_id"]
        events.append({"event_id": f"{who}-s{i}", "suggestion_id": sid, "type": "shown"})
        kind = "accepted" if i < accept else "rejected"
        events.append({"event_id": f"{who}-o{i}", "suggestion_id": sid, "type": kind})
    r = gw.client.post("/v1/telemetry/events", json={"events": events}, headers=gw.auth(who))
    assert r.status_code == 202


@pytest.mark.parametrize("group_by", ["model_version", "language", "client", "day"])
def test_when_grouped_then_counts_and_rate(gw, group_by):
    _history(gw, "dev", accept=3, reject=1)
    gw.flush()
    r = gw.client.get(f"/v1/analytics/acceptance?group_by={group_by}", headers=gw.auth("ml"))
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["shown"], row["accepted"]) == (4, 3)
    assert row["acceptance_rate"] == pytest.approx(0.75)
    assert row["accepted_chars"] == 3 * len("return a + b\n")


def test_when_other_tenant_asks_then_it_sees_only_its_own(gw):
    _history(gw, "dev", accept=2, reject=0)
    _history(gw, "other", accept=0, reject=1)
    gw.flush()
    acme = gw.client.get("/v1/analytics/acceptance", headers=gw.auth("ml")).json()
    globex = gw.client.get("/v1/analytics/acceptance", headers=gw.auth("other")).json()
    assert (acme["rows"][0]["shown"], acme["rows"][0]["accepted"]) == (2, 2)
    assert (globex["rows"][0]["shown"], globex["rows"][0]["accepted"]) == (1, 0)


def test_when_auditor_asks_then_allowed(gw):
    assert gw.client.get("/v1/analytics/acceptance", headers=gw.auth("auditor")).status_code == 200


def test_when_group_by_unknown_then_422_names_it(gw):
    r = gw.client.get("/v1/analytics/acceptance?group_by=colour", headers=gw.auth("ml"))
    assert r.status_code == 422
    assert "group_by" in r.json()["detail"]
