"""Per-tenant and per-repo overrides: merged over the base at redact time, validated like
the rest of the policy (field and line)."""

from __future__ import annotations

import textwrap

import pytest

from redaction import PolicyError, Redactor, parse_policy
from tests.redaction.conftest import KEY, pattern_only_policy

BASE = textwrap.dedent(
    """\
    schema_version: 1
    entities:
      EMAIL_ADDRESS: {action: replace}
      IP_ADDRESS: {action: replace}
    opt_out_repos: ["secret-org/*"]
    overrides:
      - name: acme-hash
        match: {tenants: [acme]}
        entities:
          EMAIL_ADDRESS: {action: hash}
      - name: payments
        match: {tenants: [acme], repos: ["acme/payments-*"]}
        remove_entities: [IP_ADDRESS]
        path_rules:
          - {glob: "**/fixtures/**"}
      - name: globex-codename
        match: {repos: ["globex/*"]}
        entities:
          CODENAME: {action: mask}
        custom_recognizers:
          - name: codename
            entity: CODENAME
            deny_list: [Bluebird]
    """
)
TEXT = "mail ops@acme-corp.com from 10.1.2.3 about Bluebird"


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(parse_policy(BASE), key=KEY)


def _redact(redactor: Redactor, **where: str) -> str | None:
    result = redactor.redact({"prefix": TEXT}, **where)
    return None if result is None else result.fields["prefix"]


def test_when_no_override_matches_then_base_policy_applies(redactor):
    assert _redact(redactor, tenant="initech", repo="initech/app") == (
        "mail <EMAIL_1> from <IP_ADDRESS_1> about Bluebird"
    )


def test_when_tenant_override_matches_then_its_action_replaces_the_base_one(redactor):
    out = _redact(redactor, tenant="acme", repo="acme/web")
    assert out is not None
    assert out.startswith("mail <EMAIL:") and "<IP_ADDRESS_1>" in out


def test_when_tenant_and_repo_both_match_then_overrides_apply_in_order(redactor):
    out = _redact(redactor, tenant="acme", repo="acme/payments-api")
    assert out is not None
    assert out.startswith("mail <EMAIL:")  # from the first override
    assert "10.1.2.3" in out  # IP_ADDRESS removed by the second


def test_when_only_the_repo_matches_an_override_that_also_names_tenants_then_it_is_skipped(
    redactor,
):
    assert "<IP_ADDRESS_1>" in (_redact(redactor, tenant="globex", repo="acme/payments-api") or "")


def test_when_override_adds_a_path_rule_then_only_its_records_are_dropped(redactor):
    fixture = "src/fixtures/users.json"
    assert (
        redactor.redact({"prefix": TEXT}, tenant="acme", repo="acme/payments-x", file_path=fixture)
        is None
    )
    assert redactor.redact({"prefix": TEXT}, tenant="acme", repo="acme/web", file_path=fixture)


def test_when_override_brings_a_custom_recognizer_then_it_runs_for_its_repos_only(redactor):
    assert "********" in (_redact(redactor, tenant="globex", repo="globex/site") or "")
    assert "Bluebird" in (_redact(redactor, tenant="initech", repo="initech/site") or "")


def test_when_repo_is_opted_out_then_no_override_brings_it_back(redactor):
    assert _redact(redactor, tenant="acme", repo="secret-org/x") is None


def test_when_record_redacted_under_an_override_then_it_carries_the_file_version(redactor):
    result = redactor.redact({"prefix": TEXT}, tenant="acme", repo="acme/payments-api")
    assert result is not None and result.policy_version == redactor.policy_version


def test_when_explained_then_matching_override_names_and_recognizers_are_listed(redactor):
    explanation = redactor.explain({"prefix": TEXT}, tenant="acme", repo="acme/payments-api")
    assert explanation.overrides == ["acme-hash", "payments"]
    assert [(f.entity, f.action) for f in explanation.findings] == [("EMAIL_ADDRESS", "hash")]
    assert explanation.findings[0].recognizer == "email"
    assert TEXT[explanation.findings[0].start : explanation.findings[0].end] == "ops@acme-corp.com"


def test_when_override_changes_then_version_changes():
    assert parse_policy(BASE).version != parse_policy(BASE.replace("[acme]}", "[acme, b]}")).version


def _errors(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="t.yaml")
    return [(e["loc"], e["line"], e["msg"]) for e in info.value.errors]


@pytest.mark.parametrize(
    "old,new,loc,line,msg",
    [
        # an unknown entity inside an override
        (
            "EMAIL_ADDRESS: {action: hash}",
            "EMAIL_ADRESS: {action: hash}",
            "overrides.0.entities.EMAIL_ADRESS",
            10,
            "unknown entity 'EMAIL_ADRESS'",
        ),
        # removing an entity the base does not act on
        (
            "remove_entities: [IP_ADDRESS]",
            "remove_entities: [PERSON]",
            "overrides.1.remove_entities.0",
            13,
            "not an entity of the base policy",
        ),
        # a match that matches nothing in particular
        (
            'match: {repos: ["globex/*"]}',
            "match: {}",
            "overrides.2.match",
            17,
            "must match tenants, repos or both",
        ),
        # two overrides with one name
        ("name: payments", "name: acme-hash", "overrides.1.name", 11, "duplicate override name"),
        # a custom recognizer's entity without a rule
        (
            "CODENAME: {action: mask}",
            "EMAIL_ADDRESS: {action: mask}",
            "overrides.2.custom_recognizers.0.entity",
            22,
            "has no rule under entities",
        ),
        # an unknown field
        (
            "remove_entities:",
            "remove_entity:",
            "overrides.1.remove_entity",
            13,
            "Extra inputs are not permitted",
        ),
    ],
)
def test_when_override_is_bad_then_error_names_field_and_line(old, new, loc, line, msg):
    errors = _errors(BASE.replace(old, new))
    assert any(e[0] == loc and e[1] == line and msg in e[2] for e in errors), errors


def test_when_override_regex_backtracks_then_refused_with_its_line():
    text = BASE + "    allow: {regexes: ['(a+)+$']}\n"
    errors = _errors(text)
    assert errors[0][0] == "overrides.2.allow.regexes.0"
    assert "catastrophically" in errors[0][2]


def test_when_default_policy_has_no_overrides_then_records_get_the_base_policy():
    policy = pattern_only_policy()
    assert policy.document.overrides == []
    assert policy.matching_overrides("acme", "acme/x") == ()
    assert policy.with_overrides(()) is policy
