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

__all__ = [
    "BootstrapConfig",
    "bootstrap_model",
    "errors",
    "is_complete_model_dir",
    "read_manifest",
]
