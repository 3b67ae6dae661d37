"""The policy store: seed, apply (validate -> store -> activate -> audit), history, diff."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from redaction import AuditLog, PolicyError, PolicyNotFound, PolicyStore
from tests.redaction.conftest import DEFAULT_POLICY


def _store(tmp_path: Path) -> PolicyStore:
    return PolicyStore(tmp_path / "policies", AuditLog(tmp_path / "audit" / "audit.jsonl"))


def _changed(**changes: object) -> str:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    for key, value in changes.items():
        if key == "entities":
            data["entities"].update(value)  # type: ignore[arg-type]
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def store(tmp_path: Path) -> PolicyStore:
    s = _store(tmp_path)
    s.seed(DEFAULT_POLICY)
    return s


def test_when_store_empty_then_seed_stores_activates_and_audits(tmp_path):
    store = _store(tmp_path)
    assert store.is_empty() and store.active_version() is None
    policy = store.seed(DEFAULT_POLICY)
    assert store.active_version() == policy.version
    assert store.text(policy.version) == DEFAULT_POLICY.read_text()
    assert [(a.actor, a.version, a.previous) for a in store.history()] == [
        ("system:seed", policy.version, None)
    ]
    [entry] = store.audit.entries()
    assert (entry.action, entry.details["new_version"]) == ("policy.seed", policy.version)


def test_when_store_has_a_policy_then_seed_leaves_it_alone(store, tmp_path):
    applied = store.apply(_changed(description="mine"), actor="cli:a", reason="r").policy
    other = tmp_path / "other.yaml"
    other.write_text(_changed(description="other"))
    assert store.seed(other).version == applied.version
    assert store.active_version() == applied.version


def test_when_seed_file_is_bad_then_error_names_line_and_field_and_store_stays_empty(tmp_path):
    bad = tmp_path / "redaction.yaml"
    bad.write_text("schema_version: 1\nentities:\n  EMAIL_ADRESS: {action: replace}\n")
    store = _store(tmp_path)
    with pytest.raises(PolicyError) as info:
        store.seed(bad)
    assert str(bad) in str(info.value)
    assert info.value.errors[0]["loc"] == "entities.EMAIL_ADRESS"
    assert info.value.errors[0]["line"] == 3
    assert store.is_empty()


def test_when_policy_applied_then_stored_active_in_history_and_audited(store):
    seeded = store.active_version()
    result = store.apply(
        _changed(entities={"EMAIL_ADDRESS": {"action": "hash"}}),
        actor="api:acme/root",
        reason="hash e-mails for joins",
    )
    assert result.changed and result.previous == seeded
    assert store.active_version() == result.policy.version
    assert store.active_policy().document.entities["EMAIL_ADDRESS"].action == "hash"
    latest = store.history()[0]
    assert (latest.actor, latest.reason, latest.previous) == (
        "api:acme/root",
        "hash e-mails for joins",
        seeded,
    )
    entry = store.audit.tail(1)[0]
    assert entry.action == "policy.apply"
    assert entry.details == {
        "old_version": seeded,
        "new_version": result.policy.version,
        "reason": "hash e-mails for joins",
        "source": "<api>",
    }
    assert store.info(result.policy.version).actor == "api:acme/root"
    assert [v.version for v in store.versions()] == [seeded, result.policy.version]
    assert store.audit.verify().ok


def test_when_bad_policy_applied_then_refused_and_active_unchanged(store):
    before = store.active_version()
    entries = len(list(store.audit.entries()))
    with pytest.raises(PolicyError) as info:
        store.apply(
            _changed(entities={"NOT_AN_ENTITY": {"action": "mask"}}), actor="cli:a", reason="x"
        )
    assert info.value.errors[0]["loc"] == "entities.NOT_AN_ENTITY"
    assert store.active_version() == before
    assert len(store.versions()) == 1
    assert len(list(store.audit.entries())) == entries


@pytest.mark.parametrize("actor,reason", [("", "why"), ("cli:a", "  ")])
def test_when_actor_or_reason_missing_then_refused(store, actor, reason):
    with pytest.raises(PolicyError, match="required"):
        store.apply(_changed(description="x"), actor=actor, reason=reason)


def test_when_same_meaning_applied_again_then_nothing_changes(store):
    again = "# only a comment differs\n" + DEFAULT_POLICY.read_text()
    result = store.apply(again, actor="cli:a", reason="noop")
    assert not result.changed
    assert len(store.history()) == 1 and len(list(store.audit.entries())) == 1


def test_when_old_version_activated_then_rollback_is_audited(store):
    seeded = store.active_version()
    store.apply(_changed(description="v2"), actor="cli:a", reason="v2")
    result = store.activate(seeded, actor="cli:b", reason="roll back")
    assert result.changed and store.active_version() == seeded
    assert store.audit.tail(1)[0].action == "policy.activate"


@pytest.mark.parametrize("version", ["sha256:0123456789abcdef", "md5:abc", "../../etc/passwd"])
def test_when_unknown_version_asked_then_not_found(store, version):
    with pytest.raises(PolicyNotFound):
        store.get(version)


def test_when_stored_active_policy_turns_bad_then_loading_names_file_line_and_field(store):
    version = store.active_version()
    path = store.root / "versions" / f"{version.replace(':', '-')}.yaml"
    path.write_text(path.read_text().replace("EMAIL_ADDRESS:", "EMAIL_ADRESS:"))
    with pytest.raises(PolicyError) as info:
        store.active_policy()
    message = str(info.value)
    assert str(path) in message and "entities.EMAIL_ADRESS (line " in message


def test_when_two_versions_diffed_then_summary_and_unified_diff_say_what_changed(store):
    seeded = store.active_version()
    new = store.apply(
        _changed(
            entities={"EMAIL_ADDRESS": {"action": "mask"}, "NRP": {"action": "replace"}},
            opt_out_repos=["acme/secret-*"],
            overrides=[{"name": "acme", "match": {"tenants": ["acme"]}}],
        ),
        actor="cli:a",
        reason="r",
    ).policy
    diff = store.diff(seeded, new.version)
    entities = diff.summary["entities"]
    assert entities["added"] == ["NRP"] and entities["removed"] == []
    assert entities["changed"] == [
        {
            "entity": "EMAIL_ADDRESS",
            "from": {"action": "replace", "threshold": 0.5, "masking_char": "*"},
            "to": {"action": "mask", "threshold": 0.5, "masking_char": "*"},
        }
    ]
    assert diff.summary["opt_out_repos"] == {"added": ["acme/secret-*"], "removed": []}
    assert diff.summary["overrides"]["added"] == ["acme"]
    assert diff.summary["changed"] is True
    assert diff.unified.startswith(f"--- {seeded}\n+++ {new.version}\n")
    assert "+- acme/secret-*" in diff.unified


def test_when_version_diffed_with_itself_then_nothing_changed(store):
    version = store.active_version()
    diff = store.diff(version, version)
    assert diff.summary["changed"] is False and diff.unified == ""


def test_when_cli_and_gateway_apply_concurrently_then_each_is_recorded_once(tmp_path):
    first = _store(tmp_path)
    first.seed(DEFAULT_POLICY)
    errors: list[Exception] = []

    def apply(i: int) -> None:
        store = _store(tmp_path)  # separate instances, as two processes would have
        try:
            store.apply(_changed(description=f"v{i}"), actor=f"cli:{i}", reason="race")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=apply, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    history = first.history()
    assert len(history) == 7
    # each activation names the one before it: no lost update
    for newer, older in zip(history, history[1:], strict=False):
        assert newer.previous == older.version
    assert first.audit.verify().ok and first.audit.verify().entries == 7
