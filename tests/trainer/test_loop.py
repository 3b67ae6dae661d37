"""trainer.loop: one cycle over a tiny store produces a registered candidate with a gate result.

Feedback comes from the simulated developers through a live gateway in front of the fake
OpenAI-compatible upstream (the model server stand-in); training uses the tiny bootstrap model.
A tiny model may or may not pass the gate: these tests check the mechanics, not improvement.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from trainer import GateConfig, ModelRegistry
from trainer.loop import LoopBusyError, LoopConfig, _exclusive, last_until
from trainer.simulator import make_population, run_population

TINY_TRAIN = {
    "max_steps": 2, "batch_size": 4, "checkpoint_every_steps": 100, "replay_weight": 0.0
}  # fmt: skip


def _flush(live) -> None:
    deadline = time.monotonic() + 30
    while live.runtime.ingestor.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    live.runtime.store.flush()


def _config(settings, model_dir: Path, **overrides) -> LoopConfig:
    from gateway.cli_loop import loop_config

    config = loop_config(settings, train=TINY_TRAIN, **overrides)
    config.base_model_dir = model_dir
    config.gate = GateConfig(max_generations=2, max_new_tokens=8, general_code_bytes=4000)
    return config


def test_when_a_cycle_runs_on_simulated_feedback_then_a_candidate_is_registered_with_its_gate(
    live_gateway, tiny_model_dir: Path
) -> None:
    from gateway.cli_loop import run_loop_cycle

    population = make_population(5, developers=2, files_per_developer=4)
    tokens = {"dev0": live_gateway.tokens["dev"], "dev1": live_gateway.tokens["dev2"]}
    start = datetime.now(UTC) - timedelta(seconds=1)
    run_population(live_gateway.url, tokens, population, seed=5)
    _flush(live_gateway)
    settings = live_gateway.settings
    config = _config(settings, tiny_model_dir, promote="canary")
    until = datetime.now(UTC)

    result = run_loop_cycle(settings, config, since=start, until=until)

    assert result.status in ("promoted", "refused")
    assert result.snapshot_id and result.method == "sft"  # hand-written texts are kept completions
    assert result.steps == 2
    assert set(result.gate["checks"]) == {
        "preference_accuracy",
        "reward_margin",
        "generation",
        "perplexity",
    }
    version = ModelRegistry(config.registry_dir).get(result.version)
    assert version.gate == result.gate and version.snapshot_id == result.snapshot_id
    assert version.state == ("canary" if result.gate["passed"] else "candidate")
    assert last_until(config.state_dir) == until
    audit = (settings.data_dir / "audit" / "audit.jsonl").read_text(encoding="utf-8")
    assert f'"{result.version}"' in audit and "model.register" in audit
    cycles = (config.state_dir / "cycles.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(cycles) == 1

    # the next cycle starts where this one ended: nothing new, so nothing to train on
    again = run_loop_cycle(settings, config, until=datetime.now(UTC))
    assert again.status == "no_data" and again.since == until.isoformat()
    assert len(ModelRegistry(config.registry_dir).list()) == 1


def test_when_a_cycle_holds_the_lock_then_another_is_refused(tmp_path: Path) -> None:
    with _exclusive(tmp_path), pytest.raises(LoopBusyError, match="state_dir"):
        with _exclusive(tmp_path):
            pass


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"promote": "production"}, "promote"),  # not a registry state the loop moves to
        ({"train": {"output_dir": "/tmp/x"}}, "train.output_dir"),  # the loop chooses it
    ],
)
def test_when_the_loop_config_is_bad_then_the_field_is_named(
    tmp_path: Path, overrides: dict, field: str
) -> None:
    from trainer.errors import InvalidConfigError

    values = {
        "base_model_dir": tmp_path,
        "registry_dir": tmp_path / "r",
        "runs_dir": tmp_path / "runs",
        "state_dir": tmp_path / "loop",
        **overrides,
    }
    with pytest.raises(InvalidConfigError, match=field):
        LoopConfig(**values)
