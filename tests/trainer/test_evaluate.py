"""trainer.evaluate: the gate scores real adapters on tiny snapshots and refuses regressions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.trainer.habits import NAMES, habit_pair, write_snapshot
from trainer import GateConfig, GateResult, TrainConfig, evaluate_candidate, train
from trainer.errors import EvaluationError, InvalidConfigError
from trainer.evaluate import general_code_texts, preference_scores

GATE = {"general_code_bytes": 12_000, "max_generations": 3, "num_threads": 1}


def trained(tmp_path: Path, model: Path, name: str, pairs, **overrides) -> Path:
    snapshot = write_snapshot(tmp_path / name, pairs=pairs)
    values = {
        "method": "dpo_sft", "max_steps": 6, "batch_size": 8, "num_threads": 1,
        "learning_rate": 5e-4, "replay_weight": 0.0,  # no replay: "wrecked" must wreck
    }  # fmt: skip
    values.update(overrides)
    out = tmp_path / f"run-{name}"
    cfg = TrainConfig(snapshot_dir=snapshot, base_model_dir=model, output_dir=out, **values)
    return train(cfg, progress=False).adapter_dir


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    return {
        "snapshot": write_snapshot(root / "eval"),
        # learned the house habit
        "good": trained(root, tiny_model_dir, "good", [habit_pair(n) for n in NAMES]),
        # learned the opposite: prefers what developers rejected
        "flipped": trained(
            root, tiny_model_dir, "flipped", [habit_pair(n, flip=True) for n in NAMES]
        ),
        # a learning rate that wrecks general code
        "wrecked": trained(
            root, tiny_model_dir, "wrecked", [habit_pair(n) for n in NAMES],
            learning_rate=5e-2, max_steps=8,
        ),
    }  # fmt: skip


def test_when_candidate_prefers_rejected_texts_then_gate_refuses_it(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    result = evaluate_candidate(
        adapters["flipped"], tiny_model_dir, adapters["snapshot"], config=GateConfig(**GATE)
    )
    assert not result.passed
    assert not result.checks["preference_accuracy"] and not result.checks["reward_margin"]
    assert result.candidate.preference_accuracy < 0.5 < 1.0
    assert result.candidate.reward_margin < 0 == result.base.reward_margin
    assert result.base.preference_accuracy == 0.5
    assert any("preference accuracy" in reason for reason in result.reasons)


def test_when_candidate_learned_the_habit_then_it_beats_the_base_on_preference(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    result = evaluate_candidate(
        adapters["good"], tiny_model_dir, adapters["snapshot"], config=GateConfig(**GATE)
    )
    assert result.checks["preference_accuracy"] and result.checks["reward_margin"]
    assert result.candidate.preference_rows == 6 and result.candidate.generations == 3
    assert result.passed == all(result.checks.values())
    # The numbers round-trip through the JSON stored with the version.
    assert GateResult.from_json(result.to_json()) == result


def test_when_candidate_wrecks_general_code_then_perplexity_check_refuses_it(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    result = evaluate_candidate(
        adapters["wrecked"], tiny_model_dir, adapters["snapshot"], config=GateConfig(**GATE)
    )
    assert not result.passed and not result.checks["perplexity"]
    assert result.candidate.perplexity > result.perplexity_limit
    assert result.perplexity_limit == pytest.approx(result.base.perplexity * 1.03)
    assert any("perplexity" in reason for reason in result.reasons)


def test_when_active_is_the_candidate_itself_then_it_does_not_beat_it(
    tiny_model_dir: Path, adapters: dict[str, Path]
) -> None:
    result = evaluate_candidate(
        adapters["good"], tiny_model_dir, adapters["snapshot"],
        active_adapter=adapters["good"], active_version="v1", config=GateConfig(**GATE),
    )  # fmt: skip
    assert not result.passed and result.active_version == "v1"
    assert result.candidate.reward_margin == pytest.approx(result.active.reward_margin)
    assert any("v1's" in reason for reason in result.reasons)


def test_when_general_code_sample_built_twice_then_identical_and_bounded() -> None:
    dirs = GateConfig().general_code_dirs
    first, info = general_code_texts(dirs, 20_000)
    second, again = general_code_texts(dirs, 20_000)
    assert first == second and info == again and info["bytes"] <= 20_000


@pytest.mark.parametrize(
    "kept,rejected,unpaired,expected",
    [
        ([1.0, 0.0], [0.0, 1.0], [], (0.5, 0.0, 2)),  # one right, one wrong
        ([0.0, 0.0], [0.0, 0.0], [], (0.5, 0.0, 2)),  # ties count half (the base)
        ([], [], [(0.2, True), (-0.1, False)], (1.0, pytest.approx(0.3), 2)),  # labels only
        ([], [], [], (None, None, 0)),  # nothing to judge
    ],
)
def test_when_rewards_given_then_accuracy_and_margin_follow(kept, rejected, unpaired, expected):
    assert preference_scores(kept, rejected, unpaired) == expected


def test_when_adapter_dir_is_not_an_adapter_then_error_names_it(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(EvaluationError, match="candidate_adapter"):
        evaluate_candidate(tmp_path, tiny_model_dir, tmp_path)


def test_when_gate_config_is_bad_then_error_names_the_field() -> None:
    with pytest.raises(InvalidConfigError, match="perplexity_margin"):
        GateConfig(perplexity_margin=-0.1)
