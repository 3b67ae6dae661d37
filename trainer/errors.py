"""Trainer errors. Each knows the HTTP status the gateway should answer with.

TrainerError (500)
├── InvalidConfigError (422)       a config value is out of range
├── NoSourcesError (422)           no usable *.py files under the source dirs
├── CorpusTooSmallError (422)      sources too small to train and validate on
├── CheckpointMismatchError (409)  output_dir holds checkpoints of another config or corpus
├── RunExistsError (409)           output_dir holds an earlier run and resume was not asked for
├── EmptyTrainingSetError (422)    the snapshot has no training rows the method can use
├── EvaluationError (422)          the gate cannot evaluate (no held-out data, bad adapter)
├── RegistryError (500)
│   ├── VersionNotFoundError (404) no such model version
│   ├── InvalidTransitionError (409) the state change is not allowed from the current state
│   └── RegistryCorruptError (500) the registry file is unreadable or malformed
├── ModelDirError (500)
│   ├── IncompleteModelError (404) no complete model (manifest) in the directory
│   ├── ManifestError (500)        the manifest is unreadable or malformed
│   └── ModelWriteError (500)      writing checkpoints or the model failed (OSError)
└── TrainingFailedError (500)      torch failed during training (e.g. out of memory)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CheckpointMismatchError",
    "CorpusTooSmallError",
    "EmptyTrainingSetError",
    "EvaluationError",
    "IncompleteModelError",
    "InvalidConfigError",
    "ManifestError",
    "ModelDirError",
    "ModelWriteError",
    "NoSourcesError",
    "RegistryCorruptError",
    "RegistryError",
    "RunExistsError",
    "TrainerError",
    "TrainingFailedError",
    "VersionNotFoundError",
    "InvalidTransitionError",
]


class TrainerError(Exception):
    http_status: int = 500
    title: str = "Trainer error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidConfigError(TrainerError):
    http_status = 422
    title = "Invalid trainer configuration"


class NoSourcesError(TrainerError):
    http_status = 422
    title = "No Python sources to train on"

    def __init__(self, source_dirs: Sequence[Path]) -> None:
        self.source_dirs = [Path(d) for d in source_dirs]
        names = ", ".join(str(d) for d in self.source_dirs) or "(none given)"
        super().__init__(f"no usable Python sources (*.py) found under: {names}")


class CorpusTooSmallError(TrainerError):
    http_status = 422
    title = "Training corpus too small"


class CheckpointMismatchError(TrainerError):
    http_status = 409
    title = "Checkpoints belong to another run"


class ModelDirError(TrainerError):
    title = "Model directory error"


class IncompleteModelError(ModelDirError):
    http_status = 404
    title = "No complete model"


class ManifestError(ModelDirError):
    title = "Unreadable model manifest"


class ModelWriteError(ModelDirError):
    title = "Could not write the model"


class TrainingFailedError(TrainerError):
    title = "Training failed"


class RunExistsError(TrainerError):
    http_status = 409
    title = "Training run already exists"


class EmptyTrainingSetError(TrainerError):
    http_status = 422
    title = "Nothing to train on"


class EvaluationError(TrainerError):
    http_status = 422
    title = "Evaluation impossible"


class RegistryError(TrainerError):
    title = "Model registry error"


class VersionNotFoundError(RegistryError):
    http_status = 404
    title = "No such model version"


class InvalidTransitionError(RegistryError):
    http_status = 409
    title = "State change not allowed"


class RegistryCorruptError(RegistryError):
    title = "Unreadable model registry"
