"""Redaction of telemetry text before it is stored anywhere (Presidio + code-aware recognizers).

policy = load_policy(Path("policies/redaction.yaml"))
key = load_or_create_key(Path("/var/lib/gristmill/key"))
pool = RedactionPool(policy, key=key, workers=2, timeout_s=10)
outcomes = await pool.redact_many([RedactionItem(fields={"prefix": text}, file_path="a.py")])

store = PolicyStore(data_dir / "policies", AuditLog(data_dir / "audit" / "audit.jsonl"))
store.seed(Path("policies/redaction.yaml"))
store.apply(new_yaml, actor="cli:alice", reason="hash e-mails")  # validate, store, activate, audit
pool.reload(store.active_policy())  # in-flight batches finish under the old version
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
from redaction.policy_store import (
    Activation,
    ApplyResult,
    PolicyDiff,
    PolicyStore,
    StoredPolicy,
    diff_policies,
)
from redaction.pool import RedactionFailure, RedactionItem, RedactionPool
from redaction.redactor import ExplainedFinding, Explanation, RedactedFields, Redactor

__all__ = [
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
]
