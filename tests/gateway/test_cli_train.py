"""`gristmill train` and `gristmill models`: the whole path on the tiny model, audit included."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from gateway.cli import app
from redaction import AuditLog
from tests.trainer.habits import write_snapshot


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_when_trained_from_cli_then_candidate_is_gated_registered_promoted_and_audited(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    snapshot = write_snapshot(data / "datasets")
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(
        "method: dpo_sft\nmax_steps: 50\nbatch_size: 8\nnum_threads: 1\nreplay_bytes: 20000\n"
    )
    result = run(
        "train", snapshot.name, "--config", str(run_yaml), "--max-steps", "2",
        "--base-model", str(tiny_model_dir), "--data-dir", str(data), "--no-progress",
        "--actor", "cli:alice",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2  # the flag overrode the YAML's 50
    assert summary["method"] == "dpo_sft" and summary["version"] == "v1"
    gate = summary["gate"]
    assert set(gate["checks"]) == {
        "preference_accuracy",
        "reward_margin",
        "generation",
        "perplexity",
    }

    listed = run("models", "list", "--data-dir", str(data))
    assert json.loads(listed.stdout)["state"] == "candidate"
    shown = json.loads(run("models", "show", "v1", "--data-dir", str(data)).stdout)
    assert shown["snapshot_id"] == snapshot.name and shown["gate"] == gate
    assert shown["policy_versions"] == ["policy-test-1"] and shown["rules_version"]

    args = ("--data-dir", str(data), "--actor", "cli:bob")
    if not gate["passed"]:  # two steps rarely beat the base on every check
        refused = CliRunner().invoke(app, ["models", "promote", "v1", *args])
        assert refused.exit_code == 1 and "evaluation gate" in refused.output
    assert run("models", "promote", "v1", "--force", "--reason", "test", *args).exit_code == 0
    assert run("models", "promote", "v1", *args).exit_code == 0
    assert json.loads(run("models", "show", "v1", "--data-dir", str(data)).stdout)["state"] == (
        "active"
    )
    rolled = json.loads(run("models", "rollback", "--reason", "worse", *args).stdout)
    assert rolled["version"] == "v1" and rolled["to_state"] == "retired"

    entries = list(AuditLog(data / "audit" / "audit.jsonl").entries())
    assert [e.action for e in entries] == [
        "model.register", "model.promote", "model.promote", "model.rollback",
    ]  # fmt: skip
    assert entries[0].actor == "cli:alice" and entries[1].actor == "cli:bob"
    assert entries[3].details["reason"] == "worse"
    assert AuditLog(data / "audit" / "audit.jsonl").verify().ok


def test_when_run_config_has_an_unknown_field_then_cli_names_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    snapshot = write_snapshot(data / "datasets")
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("lora_rank: 8\n")
    result = CliRunner().invoke(
        app, ["train", snapshot.name, "--config", str(run_yaml), "--data-dir", str(data)]
    )
    assert result.exit_code == 2
    assert "lora_rank" in result.output


def test_when_snapshot_unknown_then_cli_names_the_argument(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "ds-nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "SNAPSHOT" in result.output


def test_when_rollback_with_nothing_active_then_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["models", "rollback", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "nothing to roll back" in result.output
