"""Each package's public API is pinned: other packages import only these names."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "package,expected",
    [
        ("gateway", {"__version__", "create_app", "create_asgi"}),
        (
            "gateway.backends",
            {
                "BACKENDS",
                "ChatMessage",
                "ChatRequest",
                "Choice",
                "CompletionRequest",
                "CompletionResult",
                "ModelBackend",
                "StreamDelta",
                "build_backend",
            },
        ),
        (
            "trainer.train",
            {
                "METHODS",
                "TrainConfig",
                "TrainResult",
                "base_model_hash",
                "directory_hash",
                "load_snapshot_rows",
                "resolve_method",
                "train",
            },
        ),
        (
            "trainer.evaluate",
            {
                "GateConfig",
                "GateResult",
                "ModelScores",
                "evaluate_candidate",
                "general_code_texts",
                "preference_scores",
            },
        ),
        ("trainer.registry", {"STATES", "ModelRegistry", "ModelVersion"}),
        (
            "trainer.loop",
            {
                "PROMOTE_TARGETS",
                "CycleResult",
                "LoopBusyError",
                "LoopConfig",
                "last_until",
                "run_cycle",
            },
        ),
        (
            "trainer.simulator",
            {
                "ACCEPT_SIMILARITY",
                "CONVENTIONS",
                "HELD_OUT_NAMES",
                "NEAR_MISS_SIMILARITY",
                "TRAINING_NAMES",
                "Convention",
                "Decision",
                "Developer",
                "GatewayClient",
                "Hole",
                "SessionReport",
                "SimulatorError",
                "SourceFile",
                "TaskResult",
                "judge",
                "make_population",
                "run_developer",
                "run_population",
            },
        ),
    ],
)
def test_when_package_imported_then_all_is_exactly_the_public_api(package, expected):
    module = importlib.import_module(package)
    assert set(module.__all__) == expected
    for name in expected:
        assert hasattr(module, name), name


@pytest.mark.parametrize("package", ["redaction", "feedback_store", "trainer"])
def test_when_core_package_imported_then_no_fastapi(package):
    import subprocess
    import sys

    code = f"import sys, {package}; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
