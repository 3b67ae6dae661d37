"""`gristmill loop run` and `gristmill demo` (mechanics on the tiny model; no improvement claimed).

Serving is the fake OpenAI-compatible upstream (the model server stand-in); training and the
gate use the tiny bootstrap model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from trainer import ModelRegistry
from trainer.simulator import make_population, run_population

runner = CliRunner()


def _flush(live) -> None:
    deadline = time.monotonic() + 30
    while live.runtime.ingestor.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    live.runtime.store.flush()


def _settings_yaml(tmp_path: Path, data_dir: Path, model_dir: Path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(data_dir), "model_dir": str(model_dir)}))
    return path


def test_when_loop_run_is_invoked_then_one_cycle_registers_a_gated_candidate(
    live_gateway, tiny_model_dir: Path, tmp_path: Path
) -> None:
    population = make_population(11, developers=2, files_per_developer=4)
    tokens = {"dev0": live_gateway.tokens["dev"], "dev1": live_gateway.tokens["dev2"]}
    run_population(live_gateway.url, tokens, population, seed=11)
    _flush(live_gateway)
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("max_steps: 2\nbatch_size: 4\nreplay_weight: 0\n")
    settings = _settings_yaml(tmp_path, live_gateway.settings.data_dir, tiny_model_dir)

    result = runner.invoke(
        app,
        ["loop", "run", "--settings", str(settings), "--config", str(run_yaml),
         "--promote", "none", "--tenant", "acme"],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] in ("registered", "refused")
    assert summary["steps"] == 2 and summary["gate"]["checks"]
    registry = ModelRegistry(live_gateway.settings.data_dir / "models" / "registry")
    assert registry.get(summary["version"]).state == "candidate"

    again = runner.invoke(app, ["loop", "run", "--settings", str(settings), "--promote", "none"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "no_data"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["loop", "run", "--every", "soon"], "--every"),  # not a duration
        (["loop", "run", "--lag", "-5m"], "--lag"),  # not a duration
        (["loop", "run", "--promote", "production"], "promote"),  # not a target state
        (["demo", "--url", "http://127.0.0.1:1"], "--token"),  # a running gateway needs a token
        (["demo", "--rounds", "0"], "--rounds"),
    ],
)
def test_when_an_option_is_bad_then_the_message_names_it(
    tmp_path: Path, args: list[str], field: str
) -> None:
    result = runner.invoke(app, [*args, "--data-dir", str(tmp_path)])

    assert result.exit_code == 2
    assert field in result.output


def test_when_the_demo_runs_a_round_then_rows_and_a_chart_come_out(
    live_gateway, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from gateway.cli_loop import DemoOptions, run_demo

    settings = live_gateway.settings.model_copy(update={"model_dir": tiny_model_dir})
    options = DemoOptions(
        rounds=1,
        developers=2,
        files=3,
        heldout_developers=1,
        heldout_files=2,
        train={"max_steps": 2, "batch_size": 4, "replay_bytes": 20_000},
        chart=tmp_path / "acceptance.png",
        results=tmp_path / "results.json",
    )
    lines: list[str] = []

    rows = run_demo(settings, live_gateway.url, live_gateway.tokens["ml"], options,
                    say=lines.append)  # fmt: skip

    assert [r.round for r in rows] == [0, 1]
    assert rows[0].version == "base" and rows[1].feedback == 12
    # the fake upstream always answers "return a + b": nothing matches a house convention
    assert rows[0].heldout_acceptance == rows[1].heldout_acceptance == 0.0
    assert rows[1].status.split()[-1] in ("promoted", "refused")
    assert rows[1].timings["cycle_s"] > 0 and rows[1].perplexity_vs_base is not None
    assert any(line.startswith("round") and "held-out acc" in line for line in lines)
    assert (tmp_path / "acceptance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved) == 2
    # what the held-out developer was shown, for inspection: 2 files x 2 holes per round
    shown = saved[0]["heldout_suggestions"]
    assert len(shown) == 4 and {s["suggestion"].strip() for s in shown} == {"return a + b"}
    assert all(s["action"] == "dismiss" and s["intended"] for s in shown)
