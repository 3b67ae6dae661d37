"""The package's public API and error tree are pinned."""

from __future__ import annotations

import redaction
from redaction import errors

PUBLIC = {
    "Activation",
    "ApplyResult",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditVerification",
    "EngineError",
    "ExplainedFinding",
    "Explanation",
    "KeyFileError",
    "PolicyDiff",
    "PolicyError",
    "PolicyNotFound",
    "PolicyStore",
    "RedactedFields",
    "RedactionError",
    "RedactionFailure",
    "RedactionItem",
    "RedactionPolicy",
    "RedactionPool",
    "RedactionTimeout",
    "Redactor",
    "StoredPolicy",
    "diff_policies",
    "keyed_hash",
    "load_or_create_key",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
}


def test_when_imported_then_all_is_exactly_the_public_api():
    assert set(redaction.__all__) == PUBLIC
    assert all(hasattr(redaction, name) for name in PUBLIC)


def test_when_errors_inspected_then_tree_and_statuses_match_the_docstring():
    assert {
        cls.__name__: cls.http_status
        for cls in (
            errors.RedactionError,
            errors.PolicyError,
            errors.KeyFileError,
            errors.EngineError,
            errors.AuditError,
            errors.PolicyNotFound,
            errors.RedactionTimeout,
        )
    } == {
        "RedactionError": 500,
        "PolicyError": 422,
        "KeyFileError": 500,
        "EngineError": 500,
        "AuditError": 500,
        "PolicyNotFound": 404,
        "RedactionTimeout": 504,
    }
    for cls in (
        errors.PolicyError,
        errors.KeyFileError,
        errors.EngineError,
        errors.AuditError,
        errors.PolicyNotFound,
    ):
        assert issubclass(cls, errors.RedactionError)
        assert cls.__name__ in errors.__doc__
    # a TimeoutError would be swallowed by Presidio's PatternRecognizer (fail open)
    assert not issubclass(errors.RedactionTimeout, TimeoutError)


def test_when_policy_error_rendered_then_it_lists_field_and_line():
    err = errors.PolicyError("bad", [{"loc": "entities.X", "line": 3, "msg": "unknown entity"}])
    assert str(err) == "bad: entities.X (line 3): unknown entity"
