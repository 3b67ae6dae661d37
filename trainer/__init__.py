"""Gristmill trainer: turns local code and feedback into models.

Importing this package is cheap; torch and transformers load only when training starts.
"""

from trainer import errors
from trainer.bootstrap import (
    BootstrapConfig,
    bootstrap_model,
    is_complete_model_dir,
    read_manifest,
)
from trainer.datasets import (
    BuildConfig,
    BuildFailed,
    BuildInvalid,
    DatasetError,
    RulesInvalid,
    SignalRules,
    Snapshot,
    SnapshotCorrupt,
    SnapshotNotFound,
    build_snapshot,
    list_snapshots,
    load_rules,
    read_card,
    verify_snapshot,
)
from trainer.evaluate import GateConfig, GateResult, ModelScores, evaluate_candidate
from trainer.loop import CycleResult, LoopConfig, run_cycle
from trainer.registry import ModelRegistry, ModelVersion
from trainer.simulator import CONVENTIONS, Developer, judge, make_population, run_population
from trainer.train import TrainConfig, TrainResult, base_model_hash, train

__all__ = [
    "GateConfig",
    "GateResult",
    "ModelRegistry",
    "ModelScores",
    "ModelVersion",
    "TrainConfig",
    "TrainResult",
    "base_model_hash",
    "evaluate_candidate",
    "train",
    "CONVENTIONS",
    "CycleResult",
    "Developer",
    "LoopConfig",
    "judge",
    "make_population",
    "run_cycle",
    "run_population",
    "BootstrapConfig",
    "BuildConfig",
    "BuildFailed",
    "BuildInvalid",
    "DatasetError",
    "RulesInvalid",
    "SignalRules",
    "Snapshot",
    "SnapshotCorrupt",
    "SnapshotNotFound",
    "bootstrap_model",
    "build_snapshot",
    "errors",
    "is_complete_model_dir",
    "list_snapshots",
    "load_rules",
    "read_card",
    "read_manifest",
    "verify_snapshot",
]
