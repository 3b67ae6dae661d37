"""`gristmill policy` and `gristmill audit`: validate, dry-run, apply (picked up by a running
gateway), history, diff, rollback, audit verify."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app as cli
from tests.gateway.test_policies_api import CODENAMES, DEFAULT_POLICY, EMAIL, HASH_EMAILS

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(cli, [str(a) for a in args])


def _file(tmp_path: Path, text: str, name: str = "candidate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_when_valid_file_validated_then_exit_0_with_version(tmp_path):
    result = _run("policy", "validate", _file(tmp_path, HASH_EMAILS))
    assert result.exit_code == 0
    assert "valid, version sha256:" in result.stdout


def test_when_bad_file_validated_then_exit_2_with_file_line_field_lines(tmp_path):
    text = DEFAULT_POLICY.read_text().replace("EMAIL_ADDRESS:", "EMAIL_ADRESS:")
    text = text.replace("opt_out_repos: []", "opt_out_repos: []\nallow_extra: 1")
    path = _file(tmp_path, text)
    result = _run("policy", "validate", path)
    assert result.exit_code == 2
    lines = text.splitlines()
    extra_line = next(i for i, ln in enumerate(lines, 1) if "allow_extra" in ln)
    assert result.stderr.splitlines() == [
        f"{path}:{extra_line}: allow_extra: Extra inputs are not permitted"
    ]
    # once the structure is right, every semantic problem is listed with its line
    path.write_text(text.replace("allow_extra: 1\n", "").replace("PHONE_NUMBER:", "PHONE_NUMBR:"))
    result = _run("policy", "validate", path)
    out = result.stderr.splitlines()
    assert result.exit_code == 2 and len(out) == 2
    email_line = next(i for i, ln in enumerate(lines, 1) if "EMAIL_ADRESS" in ln)
    assert out[0].startswith(f"{path}:{email_line}: entities.EMAIL_ADRESS: unknown entity")
    phone_line = next(i for i, ln in enumerate(lines, 1) if "PHONE_NUMBER:" in ln)
    assert out[1].startswith(f"{path}:{phone_line}: entities.PHONE_NUMBR: unknown entity")


@pytest.mark.parametrize(
    "content,needle",
    [
        ("schema_version: 1\nentities: [\n", ":3: <root>: "),  # broken YAML: its line
        (None, "cannot read"),  # no such file
    ],
)
def test_when_file_broken_or_missing_then_exit_2_naming_it(tmp_path, content, needle):
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    result = _run("policy", "validate", path)
    assert result.exit_code == 2
    assert str(path) in result.stderr and needle in result.stderr


def test_when_dry_run_then_json_with_redacted_text_and_findings(tmp_path):
    result = _run(
        "policy",
        "dry-run",
        _file(tmp_path, CODENAMES),
        "--text",
        f"# ask {EMAIL} about PRJ-1234",
        "--text",
        "x = 1",
        "--data-dir",
        tmp_path / "data",
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    first, second = body["samples"]
    assert first["redacted"] == "# ask <EMAIL_1> about <CODENAME_1>"
    assert {(f["entity"], f["recognizer"]) for f in first["findings"]} == {
        ("EMAIL_ADDRESS", "email"),
        ("CODENAME", "codename"),
    }
    assert second == {"redacted": "x = 1", "dropped": None, "overrides": [], "findings": []}


def test_when_dry_run_with_a_dropped_path_then_said_so(tmp_path):
    result = _run(
        "policy",
        "dry-run",
        _file(tmp_path, CODENAMES),
        "--text",
        "A=1",
        "--file-path",
        "src/internal/notes.py",
        "--data-dir",
        tmp_path / "data",
    )
    assert json.loads(result.stdout)["samples"][0]["dropped"] == "path_rule"


def test_when_applied_then_active_history_audit_and_diff_agree(tmp_path):
    data = tmp_path / "data"
    result = _run(
        "policy", "apply", _file(tmp_path, HASH_EMAILS), "--reason", "hash", "--data-dir", data
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("active: sha256:")
    history = [
        json.loads(line)
        for line in _run("policy", "history", "--data-dir", data).stdout.splitlines()
    ]
    assert [h["actor"] for h in history] == [f"cli:{getpass.getuser()}", "system:seed"]
    new, seeded = history[0]["version"], history[1]["version"]
    assert history[0]["reason"] == "hash" and history[0]["previous"] == seeded
    diff = _run("policy", "diff", seeded, new, "--data-dir", data)
    assert diff.exit_code == 0
    assert '"entity": "EMAIL_ADDRESS"' in diff.stdout and f"+++ {new}" in diff.stdout
    assert _run("policy", "show", "--data-dir", data).stdout == HASH_EMAILS
    audit = [json.loads(x) for x in _run("audit", "list", "--data-dir", data).stdout.splitlines()]
    assert [a["action"] for a in audit] == ["policy.apply", "policy.seed"]
    assert audit[0]["details"]["source"] == str(tmp_path / "candidate.yaml")
    verify = _run("audit", "verify", "--data-dir", data)
    assert verify.exit_code == 0 and "audit log OK: 2 entries" in verify.stdout
    again = _run(
        "policy", "apply", _file(tmp_path, HASH_EMAILS), "--reason", "again", "--data-dir", data
    )
    assert again.exit_code == 0 and again.stdout.startswith("unchanged:")
    back = _run("policy", "rollback", seeded, "--reason", "undo", "--data-dir", data)
    assert back.exit_code == 0 and back.stdout.startswith(f"active: {seeded}")


def test_when_bad_policy_applied_then_exit_2_and_active_unchanged(tmp_path):
    data = tmp_path / "data"
    _run("policy", "history", "--data-dir", data)  # seeds the store
    before = _run("policy", "show", "--data-dir", data).stdout
    bad = _file(tmp_path, HASH_EMAILS.replace("action: hash", "action: shred"))
    result = _run("policy", "apply", bad, "--reason", "oops", "--data-dir", data)
    assert result.exit_code == 2
    assert f"{bad}:" in result.stderr and "entities.EMAIL_ADDRESS.action" in result.stderr
    assert _run("policy", "show", "--data-dir", data).stdout == before


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["policy", "diff", "sha256:0123456789abcdef"], 1, "no stored policy"),  # unknown
        (["policy", "show", "nonsense"], 1, "not a policy version"),  # not a version
        (["policy", "rollback", "sha256:0123456789abcdef", "--reason", "x"], 1, "no stored"),
        (["policy", "apply", "x.yaml"], 2, "--reason"),  # reason is required
    ],
)
def test_when_version_or_option_is_bad_then_exit_code_and_message(tmp_path, args, code, needle):
    result = _run(*args, "--data-dir", tmp_path / "data")
    assert result.exit_code == code
    assert needle in result.output


def test_when_audit_log_tampered_then_verify_exits_1_naming_the_entry(tmp_path):
    data = tmp_path / "data"
    _run("policy", "apply", _file(tmp_path, HASH_EMAILS), "--reason", "one", "--data-dir", data)
    audit = data / "audit" / "audit.jsonl"
    lines = audit.read_text().splitlines(keepends=True)
    audit.write_text(lines[0] + lines[1].replace('"one"', '"two"'))
    result = _run("audit", "verify", "--data-dir", data)
    assert result.exit_code == 1
    assert f"TAMPERED: seq 2 at {audit}:2: content does not match its hash" in result.stderr


def test_when_cli_applies_then_running_gateway_hot_reloads_it(gateway_factory, upstream):
    upstream.fail_status = 0
    gw = gateway_factory(backend="openai_upstream", upstream_url=upstream.url, policy_poll_s=0.1)
    before = gw.runtime.pool.policy_version
    path = gw.settings.data_dir / "candidate.yaml"
    path.write_text(HASH_EMAILS)
    result = _run(
        "policy", "apply", path, "--reason", "from the CLI", "--data-dir", gw.settings.data_dir
    )
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 30
    while gw.runtime.pool.policy_version == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.runtime.pool.policy_version != before
    r = gw.client.get("/v1/policies/redaction", headers=gw.auth("admin"))
    assert r.json()["actor"].startswith("cli:")
    assert r.json()["version"] == gw.runtime.pool.policy_version
