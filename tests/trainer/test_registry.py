"""trainer.registry: lineage, the state machine, rollback, events, storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer import ModelRegistry
from trainer.errors import InvalidTransitionError, RegistryCorruptError, VersionNotFoundError


def fake_adapter(path: Path, content: bytes = b"weights") -> Path:
    """The files a PEFT adapter directory has; the registry only copies and hashes them."""
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text('{"r": 4}')
    (path / "adapter_model.safetensors").write_bytes(content)
    return path


def register(registry: ModelRegistry, tmp_path: Path, name: str, *, passed: bool = True):
    adapter = fake_adapter(tmp_path / "runs" / name, name.encode())
    return registry.register(
        adapter,
        base_model_dir="/models/base",
        base_model_hash="b" * 64,
        snapshot_id="ds-x",
        snapshot_card_hash="c" * 64,
        policy_versions=["p1"],
        rules_version="r1",
        method="kto",
        training_config={"learning_rate": 5e-4},
        metrics={"steps": 3},
        gate={"passed": passed, "reasons": [] if passed else ["margin does not beat v0"]},
        actor="alice",
    )


def test_when_registered_then_candidate_with_lineage_and_a_copied_adapter(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    version, event = register(registry, tmp_path, "one")
    assert version.id == "v1" and version.state == "candidate"
    assert event == {
        "action": "model.register",
        "version": "v1",
        "from_state": None,
        "to_state": "candidate",
        "actor": "alice",
        "at": event["at"],
    }
    stored = registry.get("v1")
    assert stored.base_model_hash == "b" * 64 and stored.snapshot_card_hash == "c" * 64
    assert stored.policy_versions == ["p1"] and stored.rules_version == "r1"
    assert stored.gate == {"passed": True, "reasons": []}
    assert Path(stored.adapter_dir).parent == tmp_path / "registry" / "v1"
    assert (Path(stored.adapter_dir) / "adapter_model.safetensors").read_bytes() == b"one"


def test_when_promoted_twice_then_active_and_the_previous_active_is_retired(
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, tmp_path, "one")
    register(registry, tmp_path, "two")
    assert registry.promote("v1", actor="alice")["to_state"] == "canary"
    assert registry.canary().id == "v1"
    event = registry.promote("v1", actor="alice")
    assert (event["from_state"], event["to_state"]) == ("canary", "active")
    assert registry.active().id == "v1" and registry.canary() is None
    registry.promote("v2", actor="bob")
    event = registry.promote("v2", actor="bob")
    assert event["previous_active"] == "v1"
    assert [(v.id, v.state) for v in registry.list()] == [("v1", "retired"), ("v2", "active")]


def test_when_rolled_back_then_previous_active_is_restored_then_the_base(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    for name in ("one", "two"):
        version, _ = register(registry, tmp_path, name)
        registry.promote(version.id, actor="alice")
        registry.promote(version.id, actor="alice")
    event = registry.rollback(actor="carol", reason="acceptance dropped")
    assert event["version"] == "v2" and event["restored"] == "v1"
    assert event["reason"] == "acceptance dropped"
    assert registry.active().id == "v1" and registry.get("v2").state == "retired"
    assert "restored" not in registry.rollback(actor="carol")
    assert registry.active() is None  # the base model serves again
    with pytest.raises(InvalidTransitionError, match="nothing to roll back"):
        registry.rollback(actor="carol")
    history = [h["action"] for h in registry.get("v1").history]
    assert history == ["model.register", "model.promote", "model.promote", "model.promote",
                       "model.rollback", "model.rollback"]  # fmt: skip


@pytest.mark.parametrize(
    "setup,action,message",
    [
        # a gate failure blocks canary unless forced with a reason
        ("failed", lambda r: r.promote("v1", actor="a"), "did not pass the evaluation gate"),
        ("failed", lambda r: r.promote("v1", actor="a", force=True), "reason"),
        # the active version cannot be promoted again or retired directly
        ("active", lambda r: r.promote("v1", actor="a"), "only a candidate or canary"),
        ("active", lambda r: r.retire("v1", actor="a"), "leaves by rollback"),
        # retired versions stay retired
        ("retired", lambda r: r.promote("v1", actor="a"), "v1 is retired"),
        # one canary at a time
        ("two_canaries", lambda r: r.promote("v2", actor="a"), "already the canary"),
    ],
)
def test_when_transition_is_invalid_then_refused_with_a_clear_error(
    tmp_path: Path, setup: str, action, message: str
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, tmp_path, "one", passed=setup != "failed")
    if setup == "active":
        registry.promote("v1", actor="a")
        registry.promote("v1", actor="a")
    elif setup == "retired":
        registry.retire("v1", actor="a")
    elif setup == "two_canaries":
        register(registry, tmp_path, "two")
        registry.promote("v1", actor="a")
    before = (tmp_path / "registry" / "registry.json").read_text()
    with pytest.raises(InvalidTransitionError, match=message):
        action(registry)
    assert (tmp_path / "registry" / "registry.json").read_text() == before


def test_when_gate_failed_and_forced_with_reason_then_canary(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, tmp_path, "one", passed=False)
    event = registry.promote("v1", actor="a", force=True, reason="hotfix reviewed by ml team")
    assert event["to_state"] == "canary" and event["reason"] == "hotfix reviewed by ml team"


def test_when_version_unknown_then_not_found(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.raises(VersionNotFoundError, match="v9"):
        registry.get("v9")
    with pytest.raises(VersionNotFoundError, match="v9"):
        registry.promote("v9", actor="a")


def test_when_registry_file_is_damaged_then_corrupt_error(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, tmp_path, "one")
    (tmp_path / "registry" / "registry.json").write_text("{not json")
    with pytest.raises(RegistryCorruptError):
        registry.list()


def test_when_stored_then_json_is_readable_and_no_temp_files_remain(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    register(registry, tmp_path, "one")
    doc = json.loads((tmp_path / "registry" / "registry.json").read_text())
    assert doc["versions"]["v1"]["state"] == "candidate" and doc["active"] is None
    assert not list((tmp_path / "registry").glob(".*.tmp"))
