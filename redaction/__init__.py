"""Redaction of telemetry text before it is stored anywhere (Presidio + code-aware recognizers).

policy = load_policy(Path("policies/redaction.yaml"))
key = load_or_create_key(Path("/var/lib/gristmill/key"))
pool = RedactionPool(policy, key=key, workers=2, timeout_s=10)
outcomes = await pool.redact_many([RedactionItem(fields={"prefix": text}, file_path="a.py")])
"""

from redaction.audit import AuditEntry, AuditLog, AuditVerification
from redaction.errors import (
    AuditError,
    EngineError,
    KeyFileError,
    PolicyError,
    PolicyNotFound,
    RedactionError,
    RedactionTimeout,
)
from redaction.keys import keyed_hash, load_or_create_key
from redaction.policy import RedactionPolicy, load_policy, parse_policy, policy_json_schema
from redaction.pool import RedactionFailure, RedactionItem, RedactionPool
from redaction.redactor import RedactedFields, Redactor

__all__ = [
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "AuditVerification",
    "EngineError",
    "KeyFileError",
    "PolicyError",
    "PolicyNotFound",
    "RedactedFields",
    "RedactionError",
    "RedactionFailure",
    "RedactionItem",
    "RedactionPolicy",
    "RedactionPool",
    "RedactionTimeout",
    "Redactor",
    "keyed_hash",
    "load_or_create_key",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
]
