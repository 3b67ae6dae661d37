"""Signals to data: stored feedback -> TRL-ready dataset snapshots, by versioned rules.

rules = load_rules()                                   # policies/signals.yaml
snap = build_snapshot(BuildConfig(parquet_dir, data_dir / "datasets", since, until,
                                  rules, context_key=key))
list_snapshots(data_dir / "datasets")                  # newest first
"""

from .build import (
    DEFAULT_MEMORY_LIMIT,
    LINEAGE_SCHEMA,
    PROMPT_SHIFT_PATTERN,
    SETS,
    SPLITS,
    BuildConfig,
    Snapshot,
    build_snapshot,
    prompt_and_shift,
)
from .errors import (
    BuildFailed,
    BuildInvalid,
    DatasetError,
    RulesInvalid,
    SnapshotCorrupt,
    SnapshotNotFound,
)
from .rules import SignalRules, default_rules_path, load_rules, parse_rules, rules_json_schema
from .snapshots import list_snapshots, read_card, snapshot_summary, verify_snapshot

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "LINEAGE_SCHEMA",
    "PROMPT_SHIFT_PATTERN",
    "SETS",
    "SPLITS",
    "BuildConfig",
    "BuildFailed",
    "BuildInvalid",
    "DatasetError",
    "RulesInvalid",
    "SignalRules",
    "Snapshot",
    "SnapshotCorrupt",
    "SnapshotNotFound",
    "build_snapshot",
    "default_rules_path",
    "list_snapshots",
    "load_rules",
    "parse_rules",
    "prompt_and_shift",
    "read_card",
    "rules_json_schema",
    "snapshot_summary",
    "verify_snapshot",
]
