"""Pytest plugin: the tiny bootstrap model, built once per session.

Enable with ``pytest_plugins = ["tests.fixtures_model"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trainer import BootstrapConfig, bootstrap_model


def tiny_config(output_dir: Path, **overrides: Any) -> BootstrapConfig:
    """The tiny preset with a time budget that never binds, so max_steps decides and runs
    are reproducible step for step even on a busy machine."""
    values: dict[str, Any] = {"max_minutes": 30.0}
    values.update(overrides)
    return BootstrapConfig.tiny(output_dir, **values)


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory: pytest.TempPathFactory) -> BootstrapConfig:
    return tiny_config(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_config: BootstrapConfig) -> Path:
    """A complete Hugging Face model directory (Llama, ~170k parameters, FIM tokens)."""
    return bootstrap_model(tiny_model_config, progress=False)
