"""The Redactor's record-level behaviour: placeholders, actions, policy rules, cache, limits."""

from __future__ import annotations

import pytest

from redaction import RedactedFields, RedactionTimeout, Redactor, keyed_hash
from tests.redaction.conftest import KEY, pattern_only_policy


def _redacted(result: RedactedFields | None) -> RedactedFields:
    assert result is not None
    return result


def test_when_same_secret_in_several_fields_then_same_placeholder(redactor, fakes):
    secret, other = fakes.aws_secret_key(), fakes.aws_secret_key()
    out = _redacted(
        redactor.redact(
            {
                "prefix": f'aws_secret_access_key = "{secret}"\nAWS_SECRET_KEY_2 = "{other}"\n',
                "completion": f'aws_secret_access_key="{secret}"',
                "final_text": f'key = "{secret}"  # pasted again',
            },
            file_path="settings.py",
        )
    )
    assert out.fields["prefix"] == (
        'aws_secret_access_key = "<AWS_SECRET_KEY_1>"\nAWS_SECRET_KEY_2 = "<AWS_SECRET_KEY_2>"\n'
    )
    assert out.fields["completion"] == 'aws_secret_access_key="<AWS_SECRET_KEY_1>"'
    # not recognisable on its own here, but it is the same value: redacted everywhere
    assert out.fields["final_text"] == 'key = "<AWS_SECRET_KEY_1>"  # pasted again'
    assert out.counts == {"AWS_SECRET_KEY": 4}


def test_when_placeholders_numbered_then_by_first_appearance_per_type(redactor):
    out = _redacted(
        redactor.redact(
            {"prefix": "# a@x-corp.com, b@x-corp.com, a@x-corp.com\n", "suffix": "# b@x-corp.com"},
            file_path="a.py",
        )
    )
    assert out.fields["prefix"] == "# <EMAIL_1>, <EMAIL_2>, <EMAIL_1>\n"
    assert out.fields["suffix"] == "# <EMAIL_2>"


def test_when_field_is_none_or_empty_then_passed_through(redactor):
    out = _redacted(redactor.redact({"prefix": None, "suffix": "", "completion": "x = 1\n"}))
    assert out.fields == {"prefix": None, "suffix": "", "completion": "x = 1\n"}
    assert out.counts == {}


@pytest.mark.parametrize(
    "path",
    [
        "app/.env",  # **/.env
        ".env.production",  # **/.env.*
        "/home/jdoe/svc/secrets/db.yaml",  # **/secrets/**
        "certs/server.pem",  # *.pem in any directory
        "C:\\Users\\jdoe\\proj\\.env",  # Windows separators
    ],
)
def test_when_path_rule_matches_then_record_dropped(redactor, path):
    assert redactor.redact({"prefix": "x = 1\n"}, file_path=path) is None


def test_when_path_rule_does_not_match_then_record_kept(redactor):
    out = redactor.redact({"prefix": "x = 1\n"}, file_path="app/environment.py")
    assert _redacted(out).fields["prefix"] == "x = 1\n"


def test_when_repo_opted_out_then_record_dropped():
    r = Redactor(pattern_only_policy(opt_out_repos=["acme/payroll", "acme/hr-*"]), key=KEY)
    assert r.redact({"prefix": "x = 1"}, repo="acme/payroll") is None
    assert r.redact({"prefix": "x = 1"}, repo="ACME/hr-portal") is None
    assert r.redact({"prefix": "x = 1"}, repo="acme/web") is not None


def test_when_entity_action_is_drop_record_then_record_dropped(fakes):
    policy = pattern_only_policy(
        entities={"PRIVATE_KEY": {"action": "drop_record"}, "EMAIL_ADDRESS": {}}
    )
    r = Redactor(policy, key=KEY)
    key_block = f"-----BEGIN EC PRIVATE KEY-----\n{fakes.pem_body(1)}\n-----END EC PRIVATE KEY-----"
    assert r.redact({"prefix": "x = 1", "completion": key_block}) is None
    assert _redacted(r.redact({"prefix": "# me@site.org"})).fields["prefix"] == "# <EMAIL_1>"


def test_when_actions_mask_and_hash_then_applied():
    policy = pattern_only_policy(
        entities={
            "EMAIL_ADDRESS": {"action": "hash"},
            "IP_ADDRESS": {"action": "mask", "masking_char": "#"},
        }
    )
    out = _redacted(
        Redactor(policy, key=KEY).redact({"prefix": "# ann@corp.example.com from 10.9.8.7\n"})
    )
    digest = keyed_hash(KEY, "ann@corp.example.com")[:16]
    assert out.fields["prefix"] == f"# <EMAIL:{digest}> from ########\n"


def test_when_value_allow_listed_then_kept():
    policy = pattern_only_policy(
        allow={"literals": ["build@ci.example.net"], "regexes": [r"[a-z]+@noreply\.acme\.io"]}
    )
    out = _redacted(
        Redactor(policy, key=KEY).redact(
            {"prefix": "# build@ci.example.net bot@noreply.acme.io dev@acme.io\n"}
        )
    )
    assert out.fields["prefix"] == "# build@ci.example.net bot@noreply.acme.io <EMAIL_1>\n"


def test_when_custom_recognizer_in_policy_then_its_entity_replaced_with_context_boost():
    policy = pattern_only_policy(
        entities={"EMPLOYEE_ID": {"threshold": 0.6}},
        custom_recognizers=[
            {
                "name": "employee_id",
                "entity": "EMPLOYEE_ID",
                "patterns": [{"name": "emp", "regex": r"\bE\d{6}\b", "score": 0.4}],
                "deny_list": ["Project Bluebird"],
                "context": ["employee"],
            }
        ],
    )
    r = Redactor(policy, key=KEY)
    out = _redacted(r.redact({"prefix": "# ticket E654321, employee E123456, Project Bluebird\n"}))
    # the score 0.4 passes the 0.6 threshold only with the context word close before it
    assert out.fields["prefix"] == "# ticket E654321, employee <EMPLOYEE_ID_1>, <EMPLOYEE_ID_2>\n"


def test_when_same_text_redacted_twice_then_analysis_served_from_cache(redactor):
    text = "# mail q.lee@example-lab.org\nvalue = compute(1)\n# Reviewed by Hannah Schmidt\n"
    first = _redacted(redactor.redact({"prefix": text}, file_path="c.py"))
    hits = redactor.cache.hits
    second = _redacted(redactor.redact({"prefix": text}, file_path="c.py"))
    assert second == first
    assert redactor.cache.hits == hits + 1


def test_when_window_shifts_then_unchanged_comment_lines_hit_the_ner_cache(redactor):
    """IDEs resend overlapping windows: lines already analysed are not analysed again."""
    line = "# Reviewed by Hannah Schmidt\n"
    redactor.redact({"prefix": "a = 1\n" + line}, file_path="d.py")
    hits = redactor.cache.hits
    out = _redacted(redactor.redact({"prefix": line + "b = 2\n"}, file_path="d.py"))
    assert out.fields["prefix"] == "# Reviewed by <PERSON_1>\nb = 2\n"
    assert redactor.cache.hits == hits + 1


def test_when_cache_keys_built_then_they_do_not_contain_the_text(redactor):
    key = redactor.cache.key("sha256:x", "field", "hash", "hunter2")
    assert b"hunter2" not in key and len(key) == 16
    other = Redactor(pattern_only_policy(), key=bytes(32)).cache.key(
        "sha256:x", "field", "hash", "hunter2"
    )
    assert key != other  # keyed: another deployment derives other keys


def test_when_time_limit_exceeded_then_redaction_timeout(redactor):
    text = "# Notes by Hannah Schmidt\nx = 'a@b.org'\n" * 5000
    with pytest.raises(RedactionTimeout):
        redactor.redact({"prefix": text}, file_path="big.py", timeout_s=1e-6)
    # the limit applies to that record only
    out = _redacted(redactor.redact({"prefix": "x = 1\n"}, file_path="a.py"))
    assert out.fields["prefix"] == "x = 1\n"
