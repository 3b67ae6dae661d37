"""What every `gristmill` command group shares: settings from flags, the error exit, and
the `--config` / `--data-dir` options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from gateway.settings import Settings

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (GRISTMILL_CONFIG).")
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (GRISTMILL_DATA_DIR).")
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `gristmill: <message>` on stderr and exit with `code` (2: bad input)."""
    typer.echo(f"gristmill: {message}", err=True)
    raise typer.Exit(code)


def settings_from(
    config: Path | None = None, data_dir: Path | None = None, **overrides: object
) -> Settings:
    """Settings from the environment and the optional YAML file, with flags on top; a bad
    value exits with a message naming the field."""
    kwargs: dict[str, object] = {k: v for k, v in overrides.items() if v is not None}
    if config is not None:
        kwargs["config_file"] = config
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    try:
        return Settings(**kwargs)  # type: ignore[arg-type]
    except Exception as exc:  # pydantic ValidationError or a missing config file
        fail(f"invalid settings: {exc}")
