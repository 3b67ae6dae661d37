"""`gristmill train` and `gristmill models`: train an adapter, gate it, manage versions.

Training runs in this CLI process (or a Kubernetes Job running it), never in the gateway.
Every registry state change is written to the audit log here, since trainer/ does not import
redaction. Heavy imports happen inside commands.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli_common import ConfigOpt, DataDirOpt
from gateway.cli_common import fail as _fail
from gateway.cli_common import settings_from as _settings
from gateway.settings import Settings

models_app = typer.Typer(
    help="Model versions: list, show, promote (candidate -> canary -> active), rollback, retire.",
    no_args_is_help=True,
)

ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who acts, for the audit log; default cli:<user>.")
]


def registry_dir(settings: Settings) -> Path:
    return settings.data_dir / "models" / "registry"


def audit_path(settings: Settings) -> Path:
    return settings.data_dir / "audit" / "audit.jsonl"


def write_audit(settings: Settings, event: dict[str, Any]) -> None:
    """The one place registry events reach the audit log (security invariant 6)."""
    from redaction import AuditLog

    details = {k: v for k, v in event.items() if k not in ("action", "actor")}
    AuditLog(audit_path(settings)).append(event["actor"], event["action"], details)


def _actor(actor: str | None) -> str:
    return actor or f"cli:{getpass.getuser()}"


def _registry(settings: Settings):
    from trainer import ModelRegistry

    return ModelRegistry(registry_dir(settings))


def _snapshot_dir(settings: Settings, snapshot: str) -> Path:
    path = Path(snapshot)
    if (path / "card.json").is_file():
        return path
    candidate = settings.data_dir / "datasets" / snapshot
    if (candidate / "card.json").is_file():
        return candidate
    _fail(f"SNAPSHOT: no dataset snapshot {snapshot!r} (an id from `gristmill datasets list`)")
    raise AssertionError  # unreachable


def _load_run_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        _fail(f"--config: cannot read {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        _fail(f"--config: {path} is not valid YAML: {exc}")
    if not isinstance(data, dict):
        _fail(f"--config: {path} must hold a mapping of training config fields")
    return data


def train_cmd(
    snapshot: Annotated[str, typer.Argument(help="Snapshot id (data_dir/datasets) or directory.")],
    run_config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML file of TrainConfig fields; flags override it."),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="auto | kto | dpo_sft | sft (default auto).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training rows.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per optimizer step.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for init and data order.")] = None,
    base_model: Annotated[
        Path | None, typer.Option(help="Base model directory; default: the gateway's model_dir.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Run directory; default data_dir/runs/<snapshot>-<method>.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the newest checkpoint.")
    ] = False,
    gate: Annotated[
        bool, typer.Option("--gate/--no-gate", help="Run the evaluation gate after training.")
    ] = True,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Register the adapter as candidate.")
    ] = True,
    perplexity_margin: Annotated[
        float, typer.Option(help="Gate: allowed general-code perplexity rise over the base.")
    ] = 0.03,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    actor: ActorOpt = None,
    settings_file: Annotated[
        Path | None, typer.Option("--settings", help="Gateway settings YAML (GRISTMILL_CONFIG).")
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Train a LoRA adapter on a snapshot, gate it, and register it as a candidate."""
    from trainer import GateConfig, TrainConfig, evaluate_candidate, train
    from trainer.errors import TrainerError
    from trainer.train import resolve_method

    settings = _settings(settings_file, data_dir)
    values: dict[str, Any] = _load_run_yaml(run_config) if run_config else {}
    flags = {
        "method": method,
        "max_steps": max_steps,
        "num_epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "seed": seed,
        "base_model_dir": base_model,
        "output_dir": output,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if resume:
        values["resume"] = True
    values["snapshot_dir"] = _snapshot_dir(settings, snapshot)
    values.setdefault("base_model_dir", settings.model_dir)
    if "output_dir" not in values:
        label = values.get("method", "auto")
        values["output_dir"] = settings.data_dir / "runs" / f"{values['snapshot_dir'].name}-{label}"
    try:
        config = TrainConfig.from_mapping(values)
        result = train(config, progress=progress)
        gate_result = None
        active = _registry(settings).active() if register or gate else None
        if gate:
            same_base = active is not None and active.base_model_hash == result.base_model_hash
            gate_result = evaluate_candidate(
                result.adapter_dir,
                config.base_model_dir,
                config.snapshot_dir,
                active_adapter=active.adapter_dir if same_base and active else None,
                active_version=active.id if same_base and active else None,
                config=GateConfig(perplexity_margin=perplexity_margin),
            )
    except TrainerError as exc:
        _fail(str(exc), code=2 if exc.http_status == 422 else 1)
        return
    summary: dict[str, Any] = {
        "method": resolve_method(config.method, result.metrics["snapshot_train_rows"]),
        "steps": result.steps,
        "seconds_per_step": result.metrics["seconds_per_step"],
        "adapter_dir": str(result.adapter_dir),
        "adapter_hash": result.adapter_hash,
        "gate": gate_result.to_json() if gate_result else None,
    }
    if register:
        card = json.loads((config.snapshot_dir / "card.json").read_text(encoding="utf-8"))
        version, event = _registry(settings).register_training(
            result,
            base_model_dir=config.base_model_dir,
            card=card,
            training_config=config.to_json(),
            gate=summary["gate"],
            actor=_actor(actor),
        )
        write_audit(settings, event)
        summary["version"] = version.id
    typer.echo(json.dumps(summary, indent=2))
    if gate_result is not None and not gate_result.passed:
        typer.echo("gristmill: the gate refused the candidate: " + "; ".join(gate_result.reasons),
                   err=True)  # fmt: skip


@models_app.command("list")
def list_cmd(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """One JSON line per version, oldest first."""
    from trainer.errors import TrainerError

    try:
        versions = _registry(_settings(config, data_dir)).list()
    except TrainerError as exc:
        _fail(str(exc), code=1)
        return
    for version in versions:
        typer.echo(json.dumps(version.summary()))


@models_app.command("show")
def show_cmd(
    version: Annotated[str, typer.Argument(help="Version id, e.g. v3.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """A version's lineage, metrics, gate result and history."""
    from trainer.errors import TrainerError

    try:
        found = _registry(_settings(config, data_dir)).get(version)
    except TrainerError as exc:
        _fail(str(exc), code=1)
        return
    typer.echo(json.dumps(found.to_json(), indent=2))


@models_app.command("promote")
def promote_cmd(
    version: Annotated[str, typer.Argument(help="A candidate (-> canary) or canary (-> active).")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote a candidate the gate refused (needs --reason).")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why; stored in the audit log.")] = "",
    actor: ActorOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Promote a version one step and record it in the audit log."""
    _change(
        config,
        data_dir,
        lambda r: r.promote(version, actor=_actor(actor), force=force, reason=reason),
    )


def _change(config: Path | None, data_dir: Path | None, change: Any) -> None:
    """Applies one registry state change, writes its event to the audit log and prints it;
    a refused change exits 1 with the registry's message."""
    from trainer.errors import TrainerError

    settings = _settings(config, data_dir)
    try:
        event = change(_registry(settings))
    except TrainerError as exc:
        _fail(str(exc), code=1)
    write_audit(settings, event)
    typer.echo(json.dumps(event))


@models_app.command("rollback")
def rollback_cmd(
    reason: Annotated[str, typer.Option(help="Why; stored in the audit log.")] = "",
    actor: ActorOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Retire the active version and restore the previous one (or the base model)."""
    _change(config, data_dir, lambda r: r.rollback(actor=_actor(actor), reason=reason))


@models_app.command("retire")
def retire_cmd(
    version: Annotated[str, typer.Argument(help="A candidate or canary.")],
    reason: Annotated[str, typer.Option(help="Why; stored in the audit log.")] = "",
    actor: ActorOpt = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Retire a candidate or abort a canary."""
    _change(config, data_dir, lambda r: r.retire(version, actor=_actor(actor), reason=reason))
