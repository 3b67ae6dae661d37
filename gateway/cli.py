"""The `gristmill` command line. Heavy imports happen inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli_common import ConfigOpt, DataDirOpt
from gateway.cli_common import fail as _fail
from gateway.cli_common import settings_from as _settings
from gateway.cli_datasets import datasets_app
from gateway.cli_loop import demo_cmd, loop_app
from gateway.cli_policy import audit_app, policy_app
from gateway.cli_train import models_app, train_cmd
from gateway.settings import Settings

app = typer.Typer(
    name="gristmill",
    help="Gristmill: an on-prem gateway that turns AI coding feedback into a private model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
tokens_app = typer.Typer(help="Bearer tokens (only their SHA-256 is stored).", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(datasets_app, name="datasets")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(models_app, name="models")
app.command("train")(train_cmd)
app.add_typer(loop_app, name="loop")
app.command("demo")(demo_cmd)


def _token_store(settings: Settings):
    from gateway.auth import TokenStore
    from redaction import load_or_create_key

    assert settings.tokens_file and settings.key_file
    return TokenStore(settings.tokens_file, user_key=load_or_create_key(settings.key_file))


@tokens_app.command("create")
def tokens_create(
    tenant: Annotated[str, typer.Option(help="Tenant the token belongs to, e.g. acme.")],
    user: Annotated[
        str, typer.Option(help="User id, e.g. alice (stored only as an HMAC in records).")
    ],
    role: Annotated[
        list[str],
        typer.Option(help="developer | ml_engineer | security_admin | auditor (repeatable)."),
    ],
    name: Annotated[str, typer.Option(help="A note to recognise the token by.")] = "",
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a token and print it once."""
    from gateway.errors import GatewayError

    store = _token_store(_settings(config, data_dir))
    try:
        token = store.create(tenant=tenant, user=user, roles=role, name=name)
    except GatewayError as exc:
        _fail(exc.detail)
    typer.echo(token)


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List tokens (ids, tenants, users, roles; never the tokens)."""
    for entry in _token_store(_settings(config, data_dir)).list():
        typer.echo(json.dumps(entry))


@app.command("bootstrap-model")
def bootstrap_model_cmd(
    max_steps: Annotated[
        int, typer.Option(help="Pretraining steps (0: --max-minutes decides).", min=0)
    ] = 800,
    max_minutes: Annotated[
        float, typer.Option(help="Pretraining time cap (the budget with --max-steps 0).")
    ] = 60.0,
    output: Annotated[
        Path | None, typer.Option(help="Model directory; default data_dir/models/bootstrap.")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Build the embedded default model: tokenizer + short pretraining on local Python sources."""
    from trainer import BootstrapConfig, bootstrap_model
    from trainer.errors import TrainerError

    settings = _settings(config, data_dir)
    target = output or settings.model_dir
    assert target is not None
    try:
        path = bootstrap_model(
            BootstrapConfig(output_dir=target, max_steps=max_steps or None, max_minutes=max_minutes)
        )
    except TrainerError as exc:
        _fail(str(exc))
    typer.echo(f"model ready: {path}")


@app.command("query")
def query_cmd(
    sql: Annotated[
        str, typer.Argument(help="Read-only SQL over suggestions, events, feedback, quarantine.")
    ],
    fmt: Annotated[str, typer.Option("--format", help="table | json | csv")] = "table",
    max_rows: Annotated[int, typer.Option(help="Stop after this many rows.")] = 100_000,
    timeout: Annotated[
        float, typer.Option(help="Interrupt the query after this many seconds.")
    ] = 30,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run read-only SQL over the landed feedback (DuckDB)."""
    from feedback_store import Catalog, StoreError

    settings = _settings(config, data_dir)
    try:
        result = Catalog(settings.parquet_dir).query(sql, max_rows=max_rows, timeout_s=timeout)
    except StoreError as exc:
        _fail(str(exc))
    if result.truncated:
        typer.echo(f"gristmill: showing the first {max_rows} rows (--max-rows)", err=True)
    if fmt == "json":
        for row in result.rows:
            typer.echo(json.dumps(dict(zip(result.columns, row, strict=True)), default=str))
    elif fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(result.columns)
        writer.writerows(result.rows)
    elif fmt == "table":
        _print_table(result.columns, result.rows)
    else:
        _fail(f"--format: {fmt!r} is not one of table, json, csv")


def _print_table(columns: list[str], rows: list[tuple]) -> None:
    cells = [[("" if v is None else str(v)).replace("\n", "\\n")[:60] for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    typer.echo("  ".join("-" * w for w in widths))
    for r in cells:
        typer.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    typer.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (GRISTMILL_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (GRISTMILL_PORT).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log one line per request.")] = True,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Start the gateway. Bootstraps a model and first tokens if there are none."""
    import logging

    import uvicorn

    from gateway.app import create_asgi

    settings = _settings(config, data_dir, host=host, port=port)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for chatty in ("presidio-analyzer", "presidio-anonymizer"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    first_tokens = _first_tokens(settings)
    if settings.backend == "embedded":
        _ensure_model(settings)
    _banner(settings, first_tokens)
    uvicorn.run(
        create_asgi(settings, freeze_gc=True),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        access_log=access_log,
        log_level="info",
    )


def _first_tokens(settings: Settings) -> dict[str, str]:
    store = _token_store(settings)
    if not store.is_empty():
        return {}
    return {
        "admin": store.create(
            tenant="default",
            user="admin",
            roles=["security_admin", "ml_engineer", "auditor", "developer"],
            name="first admin (make run)",
        ),
        "developer": store.create(
            tenant="default",
            user="developer",
            roles=["developer"],
            name="first developer (make run)",
        ),
    }


def _ensure_model(settings: Settings) -> None:
    from trainer import BootstrapConfig, bootstrap_model, is_complete_model_dir

    assert settings.model_dir is not None
    if is_complete_model_dir(settings.model_dir):
        return
    default_dir = settings.data_dir / "models" / "bootstrap"
    if settings.model_dir.resolve() != default_dir.resolve() and settings.model_dir.exists():
        return  # a user-supplied Hugging Face directory; the backend validates it on load
    steps = settings.bootstrap_steps or None
    budget = f"{steps} steps" if steps else f"{settings.bootstrap_minutes:g} min"
    typer.echo(
        f"No model yet: building the embedded default in {settings.model_dir} ({budget} of "
        "pretraining on this machine's Python sources; about 20 min on 2 cores for 800 steps, "
        "once: an interrupted build resumes). GRISTMILL_BOOTSTRAP_STEPS=200 starts sooner "
        "with a weaker model."
    )
    bootstrap_model(
        BootstrapConfig(
            output_dir=settings.model_dir, max_steps=steps, max_minutes=settings.bootstrap_minutes
        )
    )


def _banner(settings: Settings, first_tokens: dict[str, str]) -> None:
    host = "localhost" if settings.host in ("0.0.0.0", "127.0.0.1", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    lines = [
        "",
        "Gristmill gateway",
        f"  OpenAI-compatible API : {base}/v1        (Continue, OpenAI SDKs)",
        f"  Tabby-compatible API  : {base}/tabby     (Tabby IDE extensions)",
        f"  Continue dev-data     : {base}/continue/dev-data",
        "  Authenticate with     : Authorization: Bearer <token>",
    ]
    if first_tokens:
        lines += [
            "  First tokens (shown once; only their hashes are stored):",
            f"    admin     : {first_tokens['admin']}",
            f"    developer : {first_tokens['developer']}",
        ]
    else:
        lines.append("  Tokens: `gristmill tokens create --tenant T --user U --role developer`")
    lines.append("")
    typer.echo("\n".join(lines))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
