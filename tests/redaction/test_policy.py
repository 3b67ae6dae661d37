"""Policy files: validation names field and line, version is content hash, schema shipped."""

from __future__ import annotations

import json
import textwrap

import pytest

from redaction import PolicyError, load_policy, parse_policy, policy_json_schema
from tests.redaction.conftest import DEFAULT_POLICY, ROOT, policy_text

VALID = textwrap.dedent(
    """\
    schema_version: 1
    entities:
      EMAIL_ADDRESS: {action: replace}
      SECRET_CODENAME: {action: mask}
    custom_recognizers:
      - name: codename
        entity: SECRET_CODENAME
        patterns:
          - name: bird
            regex: 'Project [A-Z][a-z]+bird'
    path_rules:
      - {glob: "**/.env"}
    """
)


def _errors(text: str) -> list[dict]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="test.yaml")
    assert info.value.http_status == 422
    return info.value.errors


def test_when_default_policy_loaded_then_valid_and_versioned(default_policy):
    assert default_policy.version.startswith("sha256:")
    assert len(default_policy.version) == len("sha256:") + 16
    assert "PERSON" in default_policy.document.entities


def test_when_valid_policy_parsed_then_model_holds_it():
    policy = parse_policy(VALID)
    assert policy.document.entities["SECRET_CODENAME"].action == "mask"
    assert policy.document.custom_recognizers[0].patterns[0].score == 0.8  # default filled
    assert policy.text == VALID


def test_when_only_comments_or_layout_change_then_version_stable():
    reformatted = "# a comment\n" + VALID.replace("{action: replace}", "\n    action: replace")
    assert parse_policy(reformatted).version == parse_policy(VALID).version


@pytest.mark.parametrize(
    "change",
    [
        ("{action: replace}", "{action: hash}"),  # an action
        ("'Project [A-Z][a-z]+bird'", "'Project [A-Z][a-z]+hawk'"),  # a regex
        ('"**/.env"', '"**/.envrc"'),  # a path rule
    ],
)
def test_when_meaning_changes_then_version_changes(change):
    old, new = change
    assert parse_policy(VALID.replace(old, new)).version != parse_policy(VALID).version


def test_when_unknown_entity_then_error_names_field_and_line():
    errors = _errors(VALID.replace("EMAIL_ADDRESS:", "EMAIL_ADRESS:"))
    assert errors == [
        {"loc": "entities.EMAIL_ADRESS", "line": 3, "msg": errors[0]["msg"]},
    ]
    assert "unknown entity 'EMAIL_ADRESS'" in errors[0]["msg"]


def test_when_unknown_action_then_error_names_field_and_line():
    errors = _errors(VALID.replace("{action: mask}", "{action: shred}"))
    assert [(e["loc"], e["line"]) for e in errors] == [("entities.SECRET_CODENAME.action", 4)]
    assert "'replace'" in errors[0]["msg"]


def test_when_regex_does_not_compile_then_error_names_field_and_line():
    errors = _errors(VALID.replace("[A-Z][a-z]+bird", "[A-Z][a-z+bird"))
    assert [(e["loc"], e["line"]) for e in errors] == [
        ("custom_recognizers.0.patterns.0.regex", 10)
    ]
    assert errors[0]["msg"].startswith("bad regex")


@pytest.mark.parametrize("pattern", ["(a+)+$", r"(\w+\s?)*x", r"((ab)*c)+", r"(x{2,})*y"])
def test_when_regex_may_backtrack_catastrophically_then_refused(pattern):
    errors = _errors(VALID.replace("'Project [A-Z][a-z]+bird'", json.dumps(pattern)))
    assert [e["loc"] for e in errors] == ["custom_recognizers.0.patterns.0.regex"]
    assert "backtrack" in errors[0]["msg"]


@pytest.mark.parametrize(
    "pattern", [r"\bE\d{6}\b", r"(ab|cd)+", r"(\d{1,3}\.){3}\d{1,3}", r"[(a+)]+"]
)
def test_when_regex_is_linear_then_accepted(pattern):
    policy = parse_policy(VALID.replace("'Project [A-Z][a-z]+bird'", json.dumps(pattern)))
    assert policy.document.custom_recognizers[0].patterns[0].regex == pattern


def test_when_several_problems_then_all_reported_with_lines():
    text = VALID.replace("{action: replace}", "{action: nuke}").replace("glob:", "globe:")
    errors = _errors(text)
    assert {(e["loc"], e["line"]) for e in errors} == {
        ("entities.EMAIL_ADDRESS.action", 3),
        ("path_rules.0.glob", 12),
        ("path_rules.0.globe", 12),
    }


def test_when_custom_entity_has_no_rule_then_refused():
    errors = _errors(VALID.replace("  SECRET_CODENAME: {action: mask}\n", ""))
    assert [(e["loc"], e["line"]) for e in errors] == [("custom_recognizers.0.entity", 6)]


def test_when_key_duplicated_then_refused_not_last_wins():
    errors = _errors(
        VALID.replace("  SECRET_CODENAME:", "  EMAIL_ADDRESS: {action: keep}\n  SECRET_CODENAME:")
    )
    assert ("entities.EMAIL_ADDRESS", 4) in {(e["loc"], e["line"]) for e in errors}


def test_when_yaml_broken_then_error_has_line():
    errors = _errors("schema_version: 1\nentities: {EMAIL_ADDRESS: [\n")
    assert errors[0]["line"] is not None and errors[0]["loc"] == ""


def test_when_policy_file_missing_then_policy_error(tmp_path):
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "nope.yaml")


def test_when_schema_file_compared_then_it_matches_the_model():
    """policies/redaction.schema.json is generated from the model; regenerate it with
    `python -c 'import json, redaction; print(json.dumps(redaction.policy_json_schema(),
    indent=2, sort_keys=True))' > policies/redaction.schema.json`."""
    shipped = json.loads((ROOT / "policies" / "redaction.schema.json").read_text())
    assert shipped == policy_json_schema()
    assert shipped["properties"]["entities"]["additionalProperties"]["$ref"].endswith("EntityRule")


@pytest.mark.parametrize(
    "glob,path,drops",
    [
        ("*.pem", "a/b/c.pem", True),
        ("*.pem", "c.pem.txt", False),
        ("**/secrets/**", "secrets/x", True),
        ("**/secrets/**", "app/secrets/deep/x.yaml", True),
        ("**/secrets/**", "app/secretsmanager.py", False),
        ("config/*.yaml", "config/a.yaml", True),
        ("config/*.yaml", "config/sub/a.yaml", False),
        ("config/*.yaml", "/abs/config/a.yaml", False),
    ],
)
def test_when_path_glob_evaluated_then_gitignore_like(glob, path, drops):
    policy = parse_policy(policy_text(path_rules=[{"glob": glob}]))
    assert policy.drops_path(path) is drops


def test_when_default_policy_file_read_then_it_is_the_shipped_one(default_policy):
    assert default_policy.text == DEFAULT_POLICY.read_text()
