"""Policy administration over HTTP: read, put (validated, audited, hot-reloaded), validate,
history, diff, dry runs (samples and replay), audit log and its verification, roles."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from gateway.app import create_asgi
from redaction import PolicyError
from tests.conftest import make_settings

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "policies" / "redaction.yaml"
EMAIL = "ops@acme-corp.com"


def policy_yaml(**changes: object) -> str:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    for key, value in changes.items():
        if key == "entities":
            data["entities"].update(value)  # type: ignore[arg-type]
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


HASH_EMAILS = policy_yaml(entities={"EMAIL_ADDRESS": {"action": "hash"}})
CODENAMES = policy_yaml(
    entities={"CODENAME": {"action": "replace"}},
    custom_recognizers=[
        {
            "name": "codename",
            "entity": "CODENAME",
            "patterns": [{"name": "ticket", "regex": r"\bPRJ-[0-9]{4}\b"}],
        }
    ],
    path_rules=[{"glob": "**/internal/**"}],
)


def _put(gw, text: str, reason: str = "tighten e-mail handling", who: str = "admin"):
    return gw.client.put(
        "/v1/policies/redaction",
        json={"policy": text, "reason": reason},
        headers=gw.auth(who),
    )


def _settled(gw, sql: str, n: int) -> list[tuple]:
    """Rows of `sql` once at least `n` are there: served records are written after the
    response, and one flush may land before the redaction stage has handed them on."""
    deadline = time.monotonic() + 60
    while True:
        gw.flush()
        rows = gw.query(sql)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows


def _active(gw) -> str:
    return gw.client.get("/v1/policies/redaction", headers=gw.auth("admin")).json()["version"]


def test_when_gateway_starts_then_store_is_seeded_from_the_policy_file(gw):
    r = gw.client.get("/v1/policies/redaction", headers=gw.auth("admin"))
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == DEFAULT_POLICY.read_text()
    assert body["version"] == gw.runtime.pool.policy_version
    assert body["actor"] == "system:seed"


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("GET", "/v1/policies/redaction", None),
        ("PUT", "/v1/policies/redaction", {"policy": "x", "reason": "y"}),
        ("POST", "/v1/policies/validate", {"policy": "x"}),
        ("GET", "/v1/policies/history", None),
        ("POST", "/v1/policies/dry-run", {"samples": [{"text": "x"}]}),
        ("GET", "/v1/audit", None),
        ("GET", "/v1/audit/verify", None),
    ],
)
def test_when_developer_calls_policy_routes_then_403(gw, method, path, body):
    r = gw.client.request(method, path, json=body, headers=gw.auth("dev"))
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        # the auditor reads the policy, its history and the audit log ...
        ("GET", "/v1/policies/redaction", None, 200),
        ("GET", "/v1/policies/history", None, 200),
        ("GET", "/v1/audit", None, 200),
        ("GET", "/v1/audit/verify", None, 200),
        # ... but changes nothing and runs nothing
        ("PUT", "/v1/policies/redaction", {"policy": HASH_EMAILS, "reason": "y"}, 403),
        ("POST", "/v1/policies/dry-run", {"samples": [{"text": "x"}]}, 403),
    ],
)
def test_when_auditor_calls_policy_routes_then_reads_only(gw, method, path, body, status):
    assert gw.client.request(method, path, json=body, headers=gw.auth("auditor")).status_code == (
        status
    )


def test_when_policy_put_then_active_reloaded_history_and_audit_record_who_and_why(gw):
    before = _active(gw)
    r = _put(gw, HASH_EMAILS, reason="join on hashed e-mails")
    assert r.status_code == 200, r.text
    new = r.json()["version"]
    assert r.json() == {"version": new, "previous": before, "changed": True}
    assert gw.runtime.pool.policy_version == new  # reloaded before the answer
    assert _active(gw) == new
    history = gw.client.get("/v1/policies/history", headers=gw.auth("auditor")).json()
    assert history["active"] == new
    latest = history["activations"][0]
    assert latest["actor"].startswith("api:acme/root (tok_")
    assert (latest["reason"], latest["previous"]) == ("join on hashed e-mails", before)
    audit = gw.client.get("/v1/audit", headers=gw.auth("auditor")).json()
    assert audit["verify"]["ok"] is True
    entry = audit["entries"][0]
    assert entry["action"] == "policy.apply"
    assert entry["details"]["old_version"] == before
    assert entry["details"]["new_version"] == new
    assert entry["details"]["reason"] == "join on hashed e-mails"
    # records written from now on are redacted by the new version
    gw.client.post("/v1/completions", json={"prompt": f"# mail {EMAIL}\nx = "}, headers=gw.auth())
    [(prefix, version)] = _settled(gw, "SELECT prefix, policy_version FROM suggestions", 1)
    assert version == new and "<EMAIL:" in prefix and EMAIL not in prefix


def test_when_bad_policy_put_then_422_with_line_and_field_and_active_unchanged(gw):
    before = _active(gw)
    audit_before = gw.client.get("/v1/audit/verify", headers=gw.auth("admin")).json()["entries"]
    bad = DEFAULT_POLICY.read_text().replace("EMAIL_ADDRESS:", "EMAIL_ADRESS:")
    r = _put(gw, bad)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    [error] = problem["errors"]
    assert error["loc"] == "entities.EMAIL_ADRESS"
    assert (
        error["line"]
        == bad.splitlines().index(next(line for line in bad.splitlines() if "EMAIL_ADRESS" in line))
        + 1
    )
    assert "unknown entity" in error["msg"]
    assert _active(gw) == before == gw.runtime.pool.policy_version
    after = gw.client.get("/v1/audit/verify", headers=gw.auth("admin")).json()["entries"]
    assert after == audit_before


@pytest.mark.parametrize(
    "body,field",
    [
        ({"policy": HASH_EMAILS}, "reason"),  # no reason
        ({"policy": HASH_EMAILS, "reason": ""}, "reason"),  # an empty reason
        ({"policy": "", "reason": "x"}, "policy"),  # no policy text
        ({"policy": HASH_EMAILS, "reason": "x", "activate": True}, "activate"),  # unknown field
    ],
)
def test_when_put_body_is_malformed_then_422_names_the_field(gw, body, field):
    r = gw.client.put("/v1/policies/redaction", json=body, headers=gw.auth("admin"))
    assert r.status_code == 422
    assert field in r.json()["detail"]


def test_when_yaml_is_broken_then_422_names_the_line(gw):
    r = _put(gw, "schema_version: 1\nentities: {EMAIL_ADDRESS: [\n")
    assert r.status_code == 422
    assert r.json()["errors"][0]["line"] == 3


def test_when_same_policy_put_again_then_unchanged_and_not_audited(gw):
    r = _put(gw, "# comment only\n" + DEFAULT_POLICY.read_text())
    assert r.status_code == 200 and r.json()["changed"] is False
    assert gw.client.get("/v1/audit/verify", headers=gw.auth("admin")).json()["entries"] == 1


def test_when_policy_validated_then_valid_flag_version_or_errors(gw):
    ok = gw.client.post(
        "/v1/policies/validate", json={"policy": HASH_EMAILS}, headers=gw.auth("admin")
    )
    assert ok.json()["valid"] is True and ok.json()["version"].startswith("sha256:")
    bad = gw.client.post(
        "/v1/policies/validate",
        json={"policy": HASH_EMAILS.replace("action: hash", "action: shred")},
        headers=gw.auth("admin"),
    )
    assert bad.status_code == 200
    assert bad.json()["valid"] is False
    assert bad.json()["errors"][0]["loc"] == "entities.EMAIL_ADDRESS.action"
    assert isinstance(bad.json()["errors"][0]["line"], int)
    assert _active(gw) == gw.runtime.pool.policy_version  # nothing stored


def test_when_versions_diffed_then_summary_and_unified_diff(gw):
    before = _active(gw)
    new = _put(gw, HASH_EMAILS).json()["version"]
    r = gw.client.get(
        "/v1/policies/diff", params={"from": before, "to": new}, headers=gw.auth("auditor")
    )
    assert r.status_code == 200
    body = r.json()
    assert body["summary"]["entities"]["changed"][0]["entity"] == "EMAIL_ADDRESS"
    assert body["summary"]["entities"]["changed"][0]["to"]["action"] == "hash"
    assert "+  EMAIL_ADDRESS:" in body["unified"] or "action: hash" in body["unified"]
    # `to` defaults to the active version
    default_to = gw.client.get(
        "/v1/policies/diff", params={"from": before}, headers=gw.auth("auditor")
    )
    assert default_to.json()["to_version"] == new


@pytest.mark.parametrize(
    "params,status",
    [
        ({"from": "sha256:0123456789abcdef"}, 404),  # a version never stored
        ({"from": "../../tokens.json"}, 404),  # not a version at all
        ({}, 422),  # from missing
    ],
)
def test_when_diff_names_unknown_version_then_clear_error(gw, params, status):
    r = gw.client.get("/v1/policies/diff", params=params, headers=gw.auth("admin"))
    assert r.status_code == status
    assert r.headers["content-type"] == "application/problem+json"


def test_when_dry_run_on_samples_then_redacted_texts_and_every_finding(gw):
    text = f"# ask {EMAIL} about PRJ-1234\nx = 1\n"
    r = gw.client.post(
        "/v1/policies/dry-run",
        json={
            "policy": CODENAMES,
            "samples": [
                {"text": text, "file_path": "src/app.py"},
                {"text": text, "file_path": "src/internal/notes.py"},
            ],
        },
        headers=gw.auth("admin"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    first, dropped = body["samples"]
    assert first["redacted"] == "# ask <EMAIL_1> about <CODENAME_1>\nx = 1\n"
    assert first["dropped"] is None
    findings = {(f["entity"], f["recognizer"], f["action"]) for f in first["findings"]}
    assert findings == {("EMAIL_ADDRESS", "email", "replace"), ("CODENAME", "codename", "replace")}
    email = next(f for f in first["findings"] if f["entity"] == "EMAIL_ADDRESS")
    assert text[email["start"] : email["end"]] == EMAIL
    assert 0 < email["score"] <= 1
    assert dropped == {"redacted": None, "dropped": "path_rule", "overrides": [], "findings": []}
    assert _active(gw) != body["version"]  # a dry run activates nothing


def test_when_dry_run_names_tenant_and_repo_then_overrides_apply(gw):
    candidate = policy_yaml(
        overrides=[
            {
                "name": "acme-hash",
                "match": {"tenants": ["acme"], "repos": ["acme/*"]},
                "entities": {"EMAIL_ADDRESS": {"action": "hash"}},
            }
        ]
    )
    body = {
        "policy": candidate,
        "samples": [
            {"text": f"# {EMAIL}\n", "repo": "acme/web"},  # the caller's tenant (acme)
            {"text": f"# {EMAIL}\n", "repo": "acme/web", "tenant": "globex"},
        ],
    }
    r = gw.client.post("/v1/policies/dry-run", json=body, headers=gw.auth("admin"))
    acme, globex = r.json()["samples"]
    assert acme["overrides"] == ["acme-hash"] and acme["redacted"].startswith("# <EMAIL:")
    assert globex["overrides"] == [] and globex["redacted"] == "# <EMAIL_1>\n"


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (
            {"policy": "schema_version: 2\nentities: {}\n", "samples": [{"text": "x"}]},
            422,
            "schema_version",
        ),
        ({"samples": []}, 422, "nothing to dry-run"),
        ({"samples": [{"text": "x"}] * 101}, 422, "samples"),
        ({"replay_last": 5000}, 422, "replay_last"),
    ],
)
def test_when_dry_run_input_is_bad_then_422_names_it(gw, body, status, needle):
    r = gw.client.post("/v1/policies/dry-run", json=body, headers=gw.auth("admin"))
    assert r.status_code == status
    assert needle in json.dumps(r.json())


def test_when_replay_dry_run_then_counts_beyond_active_policy_with_a_note(gw):
    prompts = [
        f"# PRJ-1234 notes for {EMAIL}\nx = ",  # codename + an e-mail (already redacted)
        "# PRJ-5678\ny = ",
        "z = 1\n",
    ]
    for prompt in prompts:
        gw.client.post("/v1/completions", json={"prompt": prompt}, headers=gw.auth())
    gw.client.post(
        "/v1/completions",
        json={"prompt": "w = ", "gristmill": {"file_path": "src/internal/a.py"}},
        headers=gw.auth(),
    )
    # another tenant's record is not replayed
    gw.client.post("/v1/completions", json={"prompt": "# PRJ-9999\n"}, headers=gw.auth("other"))
    _settled(gw, "SELECT * FROM suggestions", 5)
    r = gw.client.post(
        "/v1/policies/dry-run",
        json={"policy": CODENAMES, "replay_last": 10},
        headers=gw.auth("admin"),
    )
    assert r.status_code == 200, r.text
    replay = r.json()["replay"]
    assert replay["records"] == 4
    assert replay["additional_findings"] == {"CODENAME": 2}
    assert replay["would_drop"] == {"path_rule": 1}
    assert replay["active_version"] == gw.runtime.pool.policy_version
    assert "already redacted" in replay["note"]


def test_when_replay_on_empty_store_then_zero_records(gw):
    r = gw.client.post(
        "/v1/policies/dry-run",
        json={"policy": CODENAMES, "replay_last": 10},
        headers=gw.auth("admin"),
    )
    assert r.status_code == 200, r.text
    assert r.json()["replay"]["records"] == 0


def test_when_audit_log_tampered_then_verify_names_the_entry(gw):
    _put(gw, HASH_EMAILS, reason="first")
    _put(gw, CODENAMES, reason="second")
    path = gw.settings.audit_file
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("first", "innocent")
    path.write_text("".join(lines))
    verify = gw.client.get("/v1/audit/verify", headers=gw.auth("auditor")).json()
    assert verify["ok"] is False
    assert (verify["first_bad_seq"], verify["first_bad_line"]) == (2, 2)
    assert "edited" in verify["reason"]
    listing = gw.client.get("/v1/audit", headers=gw.auth("auditor")).json()
    assert listing["verify"]["ok"] is False and len(listing["entries"]) == 3


def test_when_put_during_concurrent_completions_then_no_record_lost_and_each_versioned(gw):
    """Clients keep completing (some streaming) while the policy changes: every served
    choice is stored, under the old or the new version, and its text matches that version."""
    old = _active(gw)
    per_client, clients = 12, 4
    started = threading.Barrier(clients + 1)
    failures: list[str] = []

    def client(i: int) -> None:
        started.wait()
        for j in range(per_client):
            body = {"prompt": f"# {EMAIL} c{i} r{j}\nx = ", "stream": j % 2 == 0}
            r = gw.client.post("/v1/completions", json=body, headers=gw.auth())
            if r.status_code != 200:
                failures.append(f"{i}/{j}: {r.status_code}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    started.wait()
    r = _put(gw, HASH_EMAILS, reason="mid-traffic change")
    for t in threads:
        t.join()
    assert failures == [] and r.status_code == 200
    new = r.json()["version"]
    gw.client.post("/v1/completions", json={"prompt": f"# {EMAIL}\n"}, headers=gw.auth())
    total = per_client * clients + 1
    rows = _settled(gw, "SELECT prefix, policy_version FROM suggestions", total)
    assert len(rows) == total
    assert {v for _, v in rows} <= {old, new} and None not in {v for _, v in rows}
    for prefix, version in rows:
        assert EMAIL not in prefix
        assert ("<EMAIL:" in prefix) == (version == new), (prefix, version)
    assert new in {v for _, v in rows}


def test_when_stored_active_policy_is_bad_then_startup_stops_naming_file_line_field(
    tmp_path, upstream
):
    settings = make_settings(
        tmp_path / "data", backend="openai_upstream", upstream_url=upstream.url
    )
    with TestClient(create_asgi(settings)):
        pass  # first start seeds the store
    version_file = next((settings.policy_store_dir / "versions").glob("*.yaml"))
    text = version_file.read_text().replace("EMAIL_ADDRESS:", "EMAIL_ADRESS:")
    version_file.write_text(text)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "EMAIL_ADRESS" in ln)
    with pytest.raises(PolicyError) as info, TestClient(create_asgi(settings)):
        pass
    assert str(version_file) in str(info.value)
    assert f"entities.EMAIL_ADRESS (line {line})" in str(info.value)


def test_when_policy_routes_listed_then_openapi_has_their_response_models(gw):
    spec = gw.client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, method, model in [
        ("/v1/policies/redaction", "get", "PolicyText"),
        ("/v1/policies/redaction", "put", "PutResult"),
        ("/v1/policies/validate", "post", "ValidateResult"),
        ("/v1/policies/history", "get", "HistoryOut"),
        ("/v1/policies/diff", "get", "DiffOut"),
        ("/v1/policies/dry-run", "post", "DryRunResult"),
        ("/v1/audit", "get", "AuditOut"),
        ("/v1/audit/verify", "get", "VerifyOut"),
    ]:
        schema = paths[path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/" + model)
