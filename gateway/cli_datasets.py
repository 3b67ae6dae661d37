"""`gristmill datasets`: build and list training-data snapshots. Heavy imports inside commands."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli_common import ConfigOpt, DataDirOpt
from gateway.cli_common import fail as _fail
from gateway.cli_common import settings_from as _settings
from gateway.settings import Settings

if TYPE_CHECKING:
    from trainer.datasets import BuildConfig

datasets_app = typer.Typer(
    help="Training datasets from feedback: immutable snapshots (pairs, labels, rewards, SFT).",
    no_args_is_help=True,
)


_CONTEXT_KEY_LABEL = b"gristmill datasets context-hash v1"


def parse_time(value: str, name: str) -> datetime:
    """ISO date or date-time; without a zone it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {value!r} is not an ISO date or date-time") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def rules_path(settings: Settings, override: Path | None = None) -> Path | None:
    """signals.yaml: the override, else the one in the policy directory, else the shipped one."""
    if override is not None:
        return override
    assert settings.policy_dir is not None
    candidate = settings.policy_dir / "signals.yaml"
    return candidate if candidate.is_file() else None


def build_config(
    settings: Settings,
    since: datetime,
    until: datetime,
    *,
    tenants: tuple[str, ...] | None = None,
    rules: Path | None = None,
    threads: int | None = None,
    memory_limit: str | None = "3GB",
) -> BuildConfig:
    """A build over the deployment's store: its dataset key, and the opted-out repos of the
    ACTIVE policy (the policy store's, which `gristmill policy apply` and the API change;
    the shipped file only seeds an empty store)."""
    from gateway.runtime import open_policy_store
    from redaction import load_or_create_key
    from trainer.datasets import BuildConfig, load_rules

    assert settings.key_file is not None
    # A key of its own, derived from the deployment key: context hashes are not user hashes.
    key = hmac.new(
        load_or_create_key(settings.key_file), _CONTEXT_KEY_LABEL, hashlib.sha256
    ).digest()
    policy = open_policy_store(settings).seed(settings.policy_file)
    return BuildConfig(
        parquet_dir=settings.parquet_dir,
        datasets_dir=settings.data_dir / "datasets",
        since=since,
        until=until,
        rules=load_rules(rules_path(settings, rules)),
        context_key=key,
        tenants=tenants,
        opted_out_repos=tuple(policy.document.opt_out_repos),
        threads=threads,
        memory_limit=memory_limit,
    )


@datasets_app.command("build")
def build_cmd(
    since: Annotated[
        str, typer.Option(help="Suggestions created at or after (ISO; UTC if no zone).")
    ],
    until: Annotated[
        str, typer.Option(help="Suggestions created before; later events are ignored (ISO).")
    ],
    tenant: Annotated[
        list[str] | None, typer.Option(help="Only this tenant (repeatable; default: all).")
    ] = None,
    rules: Annotated[
        Path | None,
        typer.Option(help="Signal rules file; default policy_dir/signals.yaml or the shipped one."),
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="DuckDB threads (default: all cores).")
    ] = None,
    memory_limit: Annotated[
        str, typer.Option(help="DuckDB memory limit; tables spill to disk beyond it.")
    ] = "3GB",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Build a snapshot (or find the identical one) and print its card summary as JSON."""
    from redaction import RedactionError
    from trainer.datasets import DatasetError, build_snapshot, snapshot_summary

    settings = _settings(config, data_dir)
    try:
        start, end = parse_time(since, "--since"), parse_time(until, "--until")
        cfg = build_config(
            settings,
            start,
            end,
            tenants=tuple(tenant) if tenant else None,
            rules=rules,
            threads=threads,
            memory_limit=memory_limit,
        )
        snapshot = build_snapshot(cfg, progress=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        _fail(str(exc))
        return
    except (DatasetError, RedactionError) as exc:
        _fail(str(exc), code=1)
        return
    summary = snapshot_summary(snapshot.card)
    summary["path"] = str(snapshot.path)
    summary["created"] = snapshot.created
    typer.echo(json.dumps(summary, indent=2))


@datasets_app.command("list")
def list_cmd(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List snapshots, newest first: one JSON object per line."""
    from trainer.datasets import list_snapshots

    settings = _settings(config, data_dir)
    for summary in list_snapshots(settings.data_dir / "datasets"):
        typer.echo(json.dumps(summary))


@datasets_app.command("show")
def show_cmd(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id (from `datasets list`).")],
    verify: Annotated[bool, typer.Option(help="Recompute every file's content hash.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print a snapshot's card."""
    from trainer.datasets import DatasetError, read_card, verify_snapshot

    settings = _settings(config, data_dir)
    root = settings.data_dir / "datasets"
    try:
        card = verify_snapshot(root, snapshot_id) if verify else read_card(root, snapshot_id)
    except DatasetError as exc:
        _fail(str(exc), code=1)
        return
    typer.echo(json.dumps(card, indent=2))
