"""The gristmill CLI: query over landed feedback, and its errors naming what is wrong."""

from __future__ import annotations

from typer.testing import CliRunner

from gateway.cli import app as cli


def test_when_query_runs_then_rows_printed_as_json(gw):
    gw.client.post("/v1/completions", json={"prompt": "x = "}, headers=gw.auth())
    gw.flush()
    result = CliRunner().invoke(
        cli,
        [
            "query",
            "SELECT source, completion FROM suggestions",
            "--format",
            "json",
            "--data-dir",
            str(gw.settings.data_dir),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == '{"source": "openai", "completion": "return a + b\\n"}'


def test_when_query_writes_then_refused_with_exit_2(gw):
    result = CliRunner().invoke(
        cli, ["query", "DELETE FROM events", "--data-dir", str(gw.settings.data_dir)]
    )
    assert result.exit_code == 2
    assert "DELETE" in result.output


def test_when_rows_exceed_max_rows_then_truncated_and_said(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "query",
            "SELECT * FROM range(10)",
            "--max-rows",
            "3",
            "--format",
            "csv",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["range", "0", "1", "2"]
    assert "--max-rows" in result.stderr


def test_when_settings_invalid_then_message_names_field(tmp_path, monkeypatch):
    monkeypatch.setenv("GRISTMILL_PORT", "99999")
    result = CliRunner().invoke(cli, ["query", "SELECT 1", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "port" in result.output


def test_when_no_model_exists_then_serve_bootstraps_by_the_step_budget(tmp_path, monkeypatch):
    """The default model is built by steps (the same model whatever shares the cores);
    GRISTMILL_BOOTSTRAP_STEPS=0 hands the budget to the minutes. bootstrap_model itself is
    replaced here: pretraining 800 steps takes ~20 min (tests/trainer/test_bootstrap.py runs
    the real thing on a tiny preset)."""
    import trainer
    from gateway.cli import _ensure_model
    from gateway.settings import Settings

    built = []
    monkeypatch.setattr(trainer, "bootstrap_model", lambda config: built.append(config))
    _ensure_model(Settings(data_dir=tmp_path))
    _ensure_model(Settings(data_dir=tmp_path, bootstrap_steps=0, bootstrap_minutes=5))
    assert [(c.max_steps, c.max_minutes) for c in built] == [(800, 60.0), (None, 5.0)]
    assert built[0].output_dir == tmp_path / "models" / "bootstrap"


def test_when_bootstrap_steps_are_negative_then_the_cli_names_the_option(tmp_path):
    result = CliRunner().invoke(
        cli, ["bootstrap-model", "--max-steps", "-1", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "--max-steps" in result.output
