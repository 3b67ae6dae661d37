"""`gristmill policy` and `gristmill audit`: the security team's command line.

Commands work on the deployment's data directory (the same policy store and audit log the
gateway uses); a running gateway on that directory hot-reloads an applied policy within
`policy_poll_s` seconds. Exit codes: 0 ok, 1 not found / tampered, 2 bad input.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from gateway.cli_common import ConfigOpt, DataDirOpt
from gateway.cli_common import fail as _fail
from gateway.cli_common import settings_from as _settings
from gateway.settings import Settings

if TYPE_CHECKING:
    from redaction import PolicyError, PolicyStore

policy_app = typer.Typer(
    help="Redaction policies: validate, dry-run, apply, history, diff (security team).",
    no_args_is_help=True,
)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)

PolicyFileArg = Annotated[Path, typer.Argument(help="Policy YAML file.")]


def _report_policy_error(source: Path | str, exc: PolicyError) -> NoReturn:
    """`FILE:LINE: field: message`, one line per problem, like a compiler; exit 2."""
    if not exc.errors:
        _fail(str(exc))
    for error in exc.errors:
        where = f"{source}:{error['line']}" if error["line"] else f"{source}"
        typer.echo(f"{where}: {error['loc'] or '<root>'}: {error['msg']}", err=True)
    raise typer.Exit(2)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{path}: cannot read: {type(exc).__name__}")


def _store(settings: Settings) -> PolicyStore:
    """The deployment's store, seeded from the configured policy file if still empty."""
    from gateway.runtime import open_policy_store
    from redaction import PolicyError

    store = open_policy_store(settings)
    try:
        store.seed(settings.policy_file)
    except PolicyError as exc:
        _report_policy_error(settings.policy_file, exc)
    return store


@policy_app.command("validate")
def validate_cmd(file: PolicyFileArg) -> None:
    """Check a policy file; prints its version, or every problem as FILE:LINE: field: message."""
    from redaction import PolicyError, parse_policy

    try:
        policy = parse_policy(_read(file), source=str(file))
    except PolicyError as exc:
        _report_policy_error(file, exc)
    typer.echo(f"{file}: valid, version {policy.version}")


@policy_app.command("dry-run")
def dry_run_cmd(
    file: PolicyFileArg,
    text: Annotated[list[str], typer.Option("--text", help="Sample text (repeatable).")],
    file_path: Annotated[
        str | None, typer.Option(help="File path the text comes from (path rules, syntax).")
    ] = None,
    repo: Annotated[str | None, typer.Option(help="Repository owner/name (overrides).")] = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant (overrides).")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run a candidate policy on sample texts: redacted text and every finding, as JSON."""
    from dataclasses import asdict

    from redaction import PolicyError, RedactionError, Redactor, load_or_create_key, parse_policy

    try:
        policy = parse_policy(_read(file), source=str(file))
    except PolicyError as exc:
        _report_policy_error(file, exc)
    settings = _settings(config, data_dir)
    assert settings.key_file is not None
    try:
        redactor = Redactor(policy, key=load_or_create_key(settings.key_file))
        results = []
        for sample in text:
            explanation = redactor.explain(
                {"text": sample},
                file_path=file_path,
                repo=repo,
                tenant=tenant,
                timeout_s=settings.redaction_timeout_s,
            )
            results.append(
                {
                    "redacted": explanation.fields.get("text"),
                    "dropped": explanation.dropped,
                    "overrides": explanation.overrides,
                    "findings": [
                        {k: v for k, v in asdict(f).items() if k != "field"}
                        for f in explanation.findings
                    ],
                }
            )
    except RedactionError as exc:
        _fail(str(exc), code=1)
    typer.echo(json.dumps({"version": policy.version, "samples": results}, indent=2))


@policy_app.command("apply")
def apply_cmd(
    file: PolicyFileArg,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Validate, store and activate a policy; audited as cli:<OS user>. Running gateways on
    the same data directory reload it within policy_poll_s seconds."""
    from redaction import PolicyError

    settings = _settings(config, data_dir)
    store = _store(settings)
    actor = f"cli:{_os_user()}"
    try:
        result = store.apply(_read(file), actor=actor, reason=reason, source=str(file))
    except PolicyError as exc:
        _report_policy_error(file, exc)
    if not result.changed:
        typer.echo(f"unchanged: {result.policy.version} is already active")
        return
    typer.echo(
        f"active: {result.policy.version} (was {result.previous}); "
        f"running gateways reload it within {settings.policy_poll_s:g} s"
    )


@policy_app.command("rollback")
def rollback_cmd(
    version: Annotated[str, typer.Argument(help="A stored version (see `policy history`).")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log).")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make an earlier stored version active again (audited)."""
    from redaction import PolicyError, PolicyNotFound

    store = _store(_settings(config, data_dir))
    try:
        result = store.activate(version, actor=f"cli:{_os_user()}", reason=reason)
    except PolicyNotFound as exc:
        _fail(str(exc), code=1)
    except PolicyError as exc:
        _report_policy_error(version, exc)
    typer.echo(f"active: {result.policy.version} (was {result.previous})")


@policy_app.command("history")
def history_cmd(
    limit: Annotated[int, typer.Option(help="Newest activations to show.")] = 50,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Activations of the policy, newest first: one JSON object per line."""
    from dataclasses import asdict

    store = _store(_settings(config, data_dir))
    for activation in store.history(limit):
        typer.echo(json.dumps(asdict(activation)))


@policy_app.command("show")
def show_cmd(
    version: Annotated[str | None, typer.Argument(help="Version; default the active one.")] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Print a stored policy's YAML (a starting point for the next change)."""
    from redaction import PolicyNotFound

    store = _store(_settings(config, data_dir))
    try:
        typer.echo(store.text(version or store.active_version() or ""), nl=False)
    except PolicyNotFound as exc:
        _fail(str(exc), code=1)


@policy_app.command("diff")
def diff_cmd(
    from_version: Annotated[str, typer.Argument(help="Older version.")],
    to_version: Annotated[str | None, typer.Argument(help="Newer; default the active.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Summary and diff as JSON.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """What changed between two stored versions: a summary, then the unified diff."""
    from redaction import PolicyError, PolicyNotFound

    store = _store(_settings(config, data_dir))
    try:
        diff = store.diff(from_version, to_version or store.active_version() or "")
    except PolicyNotFound as exc:
        _fail(str(exc), code=1)
    except PolicyError as exc:
        _fail(str(exc), code=1)
    if as_json:
        typer.echo(json.dumps(diff.to_dict(), indent=2))
        return
    typer.echo(json.dumps(diff.summary, indent=2))
    typer.echo(diff.unified, nl=False)


@audit_app.command("verify")
def audit_verify_cmd(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Check the hash chain: exit 0 when intact, 1 naming the first broken entry."""
    from redaction import AuditLog

    settings = _settings(config, data_dir)
    result = AuditLog(settings.audit_file).verify()
    if result.ok:
        typer.echo(f"audit log OK: {result.entries} entries ({settings.audit_file})")
        return
    seq = f"seq {result.first_bad_seq}" if result.first_bad_seq is not None else "an entry"
    typer.echo(
        f"audit log TAMPERED: {seq} at {settings.audit_file}:{result.first_bad_line}: "
        f"{result.reason} ({result.entries} entries before it are intact)",
        err=True,
    )
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list_cmd(
    limit: Annotated[int, typer.Option(help="Newest entries to show.")] = 50,
    action: Annotated[
        str | None, typer.Option(help="Only actions starting with this, e.g. policy.")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Audit entries, newest first: one JSON object per line (run `audit verify` to check)."""
    from redaction import AuditLog

    settings = _settings(config, data_dir)
    for entry in AuditLog(settings.audit_file).tail(limit, action_prefix=action):
        typer.echo(json.dumps(entry.to_dict()))


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
