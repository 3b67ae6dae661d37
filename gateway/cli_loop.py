"""`gristmill loop run` and `gristmill demo`: the feedback loop, and the proof that it works.

`gristmill loop run` does one cycle of trainer.loop (snapshot of the feedback since the last
cycle, train, gate, register, canary); `--every 1h` repeats it, or schedule it with cron:

    0 * * * *  cd /srv/gristmill && .venv/bin/gristmill loop run --data-dir /var/lib/gristmill

`gristmill demo` drives a running gateway (`--url`/`--token`, as `make run` prints them; same
machine and data directory) or one it starts itself, with simulated developers
(trainer.simulator). Rounds of: the training developers use the served model and give
feedback; a loop cycle trains, gates and promotes (canary, then active at once: the demo's
canary window is only as long as the two promotions take); then held-out developers, with
identifiers never used in training, measure acceptance. It prints one table row per round and
writes a PNG chart of held-out acceptance by model version. Heavy imports inside commands.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli_common import DataDirOpt
from gateway.cli_common import fail as _fail
from gateway.cli_common import settings_from as _settings
from gateway.cli_train import _actor, _load_run_yaml, registry_dir, write_audit
from gateway.settings import Settings

loop_app = typer.Typer(
    help="The feedback loop: snapshot -> train -> gate -> register -> canary.",
    no_args_is_help=True,
)

SettingsOpt = Annotated[
    Path | None, typer.Option("--settings", help="Gateway settings YAML (GRISTMILL_CONFIG).")
]

DEMO_TENANT = "demo"
HOLDOUT_TENANT = "demo-holdout"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str, name: str) -> float:
    """Seconds from '90', '90s', '30m', '1h', '1d'."""
    match = _DURATION.match(value)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{name}: {value!r} is not a duration like 90s, 30m, 1h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _time(value: str | None, name: str) -> datetime | None:
    from gateway.cli_datasets import parse_time

    if value is None:
        return None
    try:
        return parse_time(value, name)
    except ValueError as exc:
        _fail(str(exc))
        raise  # unreachable


def loop_config(
    settings: Settings,
    *,
    train: dict[str, Any] | None = None,
    promote: str = "canary",
    perplexity_margin: float = 0.03,
    actor: str = "loop",
    progress: bool = False,
    state_dir: Path | None = None,
):
    """The trainer.loop config of this deployment's data directory."""
    from trainer import GateConfig
    from trainer.loop import LoopConfig

    assert settings.model_dir is not None
    return LoopConfig(
        base_model_dir=settings.model_dir,
        registry_dir=registry_dir(settings),
        runs_dir=settings.data_dir / "runs",
        state_dir=state_dir or settings.data_dir / "loop",
        train=dict(train or {}),
        gate=GateConfig(perplexity_margin=perplexity_margin),
        promote=promote,
        actor=actor,
        progress=progress,
    )


def run_loop_cycle(
    settings: Settings,
    config: Any,
    *,
    tenants: tuple[str, ...] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    say: Any = None,
):
    """One cycle over the deployment's store; its registry events go to the audit log."""
    from gateway.cli_datasets import build_config
    from trainer.loop import run_cycle

    def make_build(start: datetime, end: datetime):
        return build_config(settings, start, end, tenants=tenants)

    result = run_cycle(config, make_build, since=since, until=until, say=say)
    for event in result.events:
        write_audit(settings, event)
    return result


@loop_app.command("run")
def run_cmd(
    run_config: Annotated[
        Path | None,
        typer.Option("--config", help="YAML file of training config fields (as `train`)."),
    ] = None,
    promote: Annotated[
        str,
        typer.Option(help="After a passed gate: none | canary | active (canary, then active)."),
    ] = "canary",
    since: Annotated[
        str | None, typer.Option(help="Window start (ISO); default: where the last cycle ended.")
    ] = None,
    lag: Annotated[
        str,
        typer.Option(
            help="Window end = now minus this (e.g. 10m, the longest survival window, so "
            "outcomes are known); default 0."
        ),
    ] = "0s",
    tenant: Annotated[
        list[str] | None, typer.Option(help="Only this tenant's feedback (repeatable).")
    ] = None,
    every: Annotated[
        str | None,
        typer.Option(help="Repeat every interval (e.g. 1h) until interrupted; default: once."),
    ] = None,
    perplexity_margin: Annotated[
        float, typer.Option(help="Gate: allowed general-code perplexity rise over the base.")
    ] = 0.03,
    progress: Annotated[bool, typer.Option(help="Show training progress bars.")] = False,
    actor: Annotated[
        str | None, typer.Option("--actor", help="Who acts, for the audit log; default cli:<user>.")
    ] = None,
    settings_file: SettingsOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """One loop cycle: snapshot since the last cycle, train, gate, register, promote to canary."""
    from trainer.errors import TrainerError

    settings = _settings(settings_file, data_dir)
    try:
        lag_s = 0.0 if lag.strip() in ("0", "0s") else parse_duration(lag, "--lag")
        interval = parse_duration(every, "--every") if every else None
    except ValueError as exc:
        _fail(str(exc))
        return
    train = _load_run_yaml(run_config) if run_config else {}
    start = _time(since, "--since")
    try:
        config = loop_config(
            settings,
            train=train,
            promote=promote,
            perplexity_margin=perplexity_margin,
            actor=_actor(actor),
            progress=progress,
        )
    except TrainerError as exc:
        _fail(str(exc))
        return
    while True:
        until = datetime.now(UTC) - timedelta(seconds=lag_s)
        try:
            result = run_loop_cycle(
                settings,
                config,
                tenants=tuple(tenant) if tenant else None,
                since=start,
                until=until,
                say=lambda line: typer.echo(f"loop: {line}", err=True),
            )
        except TrainerError as exc:
            if interval is None:
                _fail(str(exc), code=2 if exc.http_status == 422 else 1)
            typer.echo(f"gristmill: loop cycle failed: {exc}", err=True)
        else:
            typer.echo(json.dumps(result.summary(), indent=2))
        if interval is None:
            return
        start = None  # later cycles continue where the previous one ended
        time.sleep(interval)


# ---------------------------------------------------------------- the demo


@dataclass
class DemoRow:
    """One line of the demo's table."""

    round: int
    version: str  # what the held-out developers were served
    heldout_acceptance: float
    heldout_exact: float
    heldout_by_convention: dict[str, float]
    training_acceptance: float | None = None
    feedback: int | None = None  # suggestions the training developers judged this round
    status: str = "baseline"
    gate_passed: bool | None = None
    perplexity_vs_base: float | None = None  # candidate / base - 1 (the gate's general code)
    method: str | None = None
    steps: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    snapshot_counts: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    # What the held-out developers were shown and did (in the results file, not the table).
    heldout_suggestions: list[dict[str, Any]] = field(default_factory=list)


def _suggestions(report: Any) -> list[dict[str, Any]]:
    keys = ("developer", "convention", "suggestion", "intended", "action", "similarity")
    return [{k: getattr(r, k) for k in keys} for r in report.results]


@dataclass
class DemoOptions:
    rounds: int = 1
    developers: int = 8
    files: int = 10
    heldout_developers: int = 4
    heldout_files: int = 6
    holes_per_file: int = 2
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    perplexity_margin: float = 0.03
    chart: Path | None = None
    results: Path | None = None


class _Gateway:
    """A gateway the demo started (`gristmill serve` in a child process), or a running one."""

    def __init__(self, url: str, process: subprocess.Popen[bytes] | None = None) -> None:
        self.url = url.rstrip("/")
        self.process = process

    @classmethod
    def start(cls, settings_file: Path | None, data_dir: Path, port: int, log: Path) -> _Gateway:
        command = [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data_dir),
                   "--port", str(port), "--no-access-log"]  # fmt: skip
        if settings_file is not None:
            command += ["--config", str(settings_file)]
        env = dict(os.environ)
        # Land records fast and pick up promotions fast; the demo judges its canary itself.
        env.setdefault("GRISTMILL_LAND_INTERVAL_S", "1")
        env.setdefault("GRISTMILL_REGISTRY_POLL_S", "1")
        env.setdefault("GRISTMILL_CANARY_CHECK_INTERVAL_S", "0")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        gateway = cls(f"http://127.0.0.1:{port}", process)
        gateway.wait_ready(timeout_s=900, log=log)
        return gateway

    def wait_ready(self, *, timeout_s: float, log: Path | None = None) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                where = f"; see {log}" if log else ""
                raise RuntimeError(f"the gateway exited with code {self.process.returncode}{where}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway at {self.url} is not ready") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_tokens(settings: Settings, names: list[str], tenant: str) -> dict[str, str]:
    """A developer token per simulated developer, kept in data_dir/demo/tokens.json (0600)
    so that re-runs reuse them instead of growing the token registry."""
    from gateway.auth import TokenStore
    from gateway.errors import GatewayError
    from redaction import load_or_create_key

    assert settings.tokens_file and settings.key_file
    store = TokenStore(settings.tokens_file, user_key=load_or_create_key(settings.key_file))
    path = settings.data_dir / "demo" / "tokens.json"
    try:
        saved: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = {}
    tokens: dict[str, str] = {}
    changed = False
    for name in names:
        key = f"{tenant}/{name}"
        token = saved.get(key)
        valid = False
        if token:
            try:
                principal = store.authenticate(token)
                valid = principal.tenant == tenant and "developer" in principal.roles
            except GatewayError:
                valid = False
        if not valid:
            token = store.create(
                tenant=tenant, user=name, roles=["developer"], name="gristmill demo developer"
            )
            saved[key] = token
            changed = True
        assert token is not None
        tokens[name] = token
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(saved, fh, indent=1)
        os.replace(tmp, path)
    return tokens


def wait_landed(
    settings: Settings, tenant: str, since: datetime, suggestions: int, events: int,
    *, timeout_s: float = 180.0,
) -> None:  # fmt: skip
    """Until the store's Parquet holds the round's suggestions and events (they land in batches)."""
    from feedback_store import Catalog, StoreError

    catalog = Catalog(settings.parquet_dir)
    deadline = time.monotonic() + timeout_s
    params = [tenant, since]
    counts = (0, 0)
    while True:
        try:
            got_s = catalog.query(
                "SELECT count(*) FROM suggestions WHERE tenant = ? AND created_at >= ?", params
            ).rows[0][0]
            got_e = catalog.query(
                "SELECT count(*) FROM events WHERE tenant = ? AND ts >= ?", params
            ).rows[0][0]
            counts = (int(got_s), int(got_e))
        except StoreError:
            counts = (0, 0)  # nothing landed yet: the views do not exist
        if counts[0] >= suggestions and counts[1] >= events:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"feedback did not land in {timeout_s:.0f} s: {counts[0]}/{suggestions} "
                f"suggestions, {counts[1]}/{events} events"
            )
        time.sleep(0.5)


def _served_version(url: str, token: str) -> str | None:
    """The registry version the gateway serves to everyone (None: base), if it says."""
    from trainer.simulator import GatewayClient, SimulatorError

    client = GatewayClient(url, token, timeout_s=10)
    try:
        answer = client.request("GET", "/v1/registry/versions")
    except SimulatorError:
        return "?"
    finally:
        client.close()
    serving = answer.get("serving") if isinstance(answer, dict) else None
    return serving.get("active") if isinstance(serving, dict) else "?"


def wait_served(url: str, token: str, version: str | None, poll_s: float) -> None:
    """Until the gateway routes everyone to ``version`` (it polls the registry)."""
    deadline = time.monotonic() + max(60.0, 20 * poll_s)
    while True:
        served = _served_version(url, token)
        if served == version:
            return
        if served == "?":  # this gateway has no status endpoint: give its poll time
            time.sleep(3 * poll_s + 1)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway still serves {served or 'base'}, not {version}")
        time.sleep(0.5)


def run_demo(
    settings: Settings,
    url: str,
    operator_token: str,
    options: DemoOptions,
    *,
    say: Any = print,
) -> list[DemoRow]:
    """The rounds of the module docstring; returns one row per round (round 0: before any)."""
    from trainer import ModelRegistry
    from trainer.simulator import HELD_OUT_NAMES, make_population, run_population

    registry = ModelRegistry(registry_dir(settings))
    poll_s = float(getattr(settings, "registry_poll_s", 2.0))
    heldout = make_population(
        options.seed,
        developers=options.heldout_developers,
        files_per_developer=options.heldout_files,
        holes_per_file=options.holes_per_file,
        names=HELD_OUT_NAMES,
        prefix="heldout",
    )
    heldout_tokens = _demo_tokens(settings, [d.name for d in heldout], HOLDOUT_TENANT)
    train_names = [f"dev{i}" for i in range(options.developers)]
    train_tokens = _demo_tokens(settings, train_names, DEMO_TENANT)
    config = loop_config(
        settings,
        train=options.train,
        promote="active",
        perplexity_margin=options.perplexity_margin,
        actor="demo",
        state_dir=settings.data_dir / "demo" / "loop",
    )

    def measure() -> Any:
        return run_population(url, heldout_tokens, heldout, seed=options.seed,
                              trailing_request=False)  # fmt: skip

    active = registry.active()
    current = active.id if active else "base"
    say(f"round 0: held-out developers on {current} ...")
    report = measure()
    rows = [
        DemoRow(0, current, report.acceptance(), report.exact_acceptance(),
                report.summary()["by_convention"], timings={"measure_s": report.seconds},
                heldout_suggestions=_suggestions(report))
    ]  # fmt: skip
    _print_row(rows[-1], say, header=True)
    since = datetime.now(UTC) - timedelta(seconds=1)
    for number in range(1, options.rounds + 1):
        cycle_started = time.monotonic()
        population = make_population(
            options.seed * 1000 + number, developers=options.developers,
            files_per_developer=options.files, holes_per_file=options.holes_per_file,
        )  # fmt: skip
        say(f"round {number}: {options.developers} developers give feedback on {current} ...")
        round_start = datetime.now(UTC) - timedelta(seconds=1)
        feedback = run_population(url, train_tokens, population, seed=options.seed + number)
        wait_landed(settings, DEMO_TENANT, round_start, feedback.requests, feedback.events)
        collect_s = time.monotonic() - cycle_started
        loop_started = time.monotonic()
        until = datetime.now(UTC)
        result = run_loop_cycle(
            settings, config, tenants=(DEMO_TENANT,), since=since, until=until,
            say=lambda line: say(f"  loop: {line}"),
        )  # fmt: skip
        since = until
        if result.status == "promoted":
            current = result.version or current
            wait_served(url, operator_token, result.version, poll_s)
        # the loop cycle: snapshot, train, gate, register, promote, served by the gateway
        cycle_s = time.monotonic() - loop_started
        round_s = time.monotonic() - cycle_started
        report = measure()
        gate = result.gate or {}
        ppl = None
        if gate:
            ppl = gate["candidate"]["perplexity"] / gate["base"]["perplexity"] - 1.0
        rows.append(
            DemoRow(
                number,
                current,
                report.acceptance(),
                report.exact_acceptance(),
                report.summary()["by_convention"],
                training_acceptance=feedback.acceptance(),
                feedback=feedback.shown,
                status=result.status if not result.version else f"{result.version} {result.status}",
                gate_passed=gate.get("passed") if gate else None,
                perplexity_vs_base=ppl,
                method=result.method,
                steps=result.steps,
                timings={
                    "collect_s": round(collect_s, 2),
                    **result.timings,
                    "cycle_s": round(cycle_s, 2),
                    "round_s": round(round_s, 2),
                    "measure_s": round(report.seconds, 2),
                },
                snapshot_counts=result.snapshot_counts,
                message=result.message,
                heldout_suggestions=_suggestions(report),
            )
        )
        _print_row(rows[-1], say)
    if options.chart is not None:
        write_chart(rows, options.chart)
        say(f"chart: {options.chart}")
    if options.results is not None:
        options.results.parent.mkdir(parents=True, exist_ok=True)
        options.results.write_text(
            json.dumps([r.__dict__ for r in rows], indent=2, default=str), encoding="utf-8"
        )
        say(f"results: {options.results}")
    return rows


_COLUMNS = (
    ("round", 5), ("served", 7), ("held-out acc", 12), ("exact", 6), ("train acc", 9),
    ("ppl vs base", 11), ("cycle", 8), ("result", 22),
)  # fmt: skip


def _print_row(row: DemoRow, say: Any, *, header: bool = False) -> None:
    if header:
        say("  ".join(name.ljust(width) for name, width in _COLUMNS))
        say("  ".join("-" * width for _, width in _COLUMNS))
    cells = [
        str(row.round),
        row.version,
        f"{row.heldout_acceptance:.1%}",
        f"{row.heldout_exact:.1%}",
        "-" if row.training_acceptance is None else f"{row.training_acceptance:.1%}",
        "-" if row.perplexity_vs_base is None else f"{row.perplexity_vs_base:+.2%}",
        "-" if "cycle_s" not in row.timings else f"{row.timings['cycle_s']:.0f} s",
        row.status,
    ]
    say("  ".join(c.ljust(width) for c, (_, width) in zip(cells, _COLUMNS, strict=True)))


def write_chart(rows: list[DemoRow], path: Path) -> Path:
    """A PNG bar chart of held-out acceptance (and exact matches) by served model version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"round {r.round}\n{r.version}" for r in rows]
    accepted = [100 * r.heldout_acceptance for r in rows]
    exact = [100 * r.heldout_exact for r in rows]
    xs = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(rows) + 2), 4.0), dpi=110)
    ax.bar([x - 0.2 for x in xs], accepted, width=0.4, label="accepted (as is or edited)")
    ax.bar([x + 0.2 for x in xs], exact, width=0.4, label="accepted unchanged")
    for x, value in zip(xs, accepted, strict=True):
        ax.annotate(f"{value:.0f}%", (x - 0.2, value), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, labels)
    ax.set_ylim(0, 105)
    ax.set_ylabel("held-out acceptance (%)")
    ax.set_title("Gristmill loop: acceptance on held-out developers by model version")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def demo_cmd(
    url: Annotated[
        str | None,
        typer.Option(
            help="A running gateway (same data dir), e.g. http://localhost:8080; "
            "default: start one."
        ),
    ] = None,  # fmt: skip
    token: Annotated[
        str | None, typer.Option(help="Admin or ml_engineer token of that gateway (make run).")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Loop cycles after the baseline.")] = 1,
    developers: Annotated[int, typer.Option(help="Training developers.")] = 8,
    files: Annotated[int, typer.Option(help="Files per training developer per round.")] = 10,
    heldout_developers: Annotated[int, typer.Option(help="Held-out developers.")] = 4,
    heldout_files: Annotated[int, typer.Option(help="Files per held-out developer.")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the simulated population.")] = 0,
    run_config: Annotated[
        Path | None,
        typer.Option("--train-config", help="YAML file of training config fields."),
    ] = None,
    chart: Annotated[
        Path | None, typer.Option(help="PNG chart path; default data_dir/demo/acceptance.png.")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port for a gateway the demo starts.")] = None,
    settings_file: SettingsOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Simulated developers use the gateway; the loop retrains; held-out acceptance is measured."""
    from trainer.errors import TrainerError

    settings = _settings(settings_file, data_dir)
    for name, value in (("--rounds", rounds), ("--developers", developers), ("--files", files),
                        ("--heldout-developers", heldout_developers),
                        ("--heldout-files", heldout_files)):  # fmt: skip
        if value < 1:
            _fail(f"{name}: must be >= 1")
    if url is not None and not token:
        _fail("--token: needed with --url (the admin token `make run` printed)")
    options = DemoOptions(
        rounds=rounds,
        developers=developers,
        files=files,
        heldout_developers=heldout_developers,
        heldout_files=heldout_files,
        seed=seed,
        train=_load_run_yaml(run_config) if run_config else {},
        chart=chart or settings.data_dir / "demo" / "acceptance.png",
        results=settings.data_dir / "demo" / "results.json",
    )
    gateway: _Gateway | None = None
    try:
        if url is None:
            log = settings.data_dir / "demo" / "gateway.log"
            typer.echo(f"starting a gateway (log: {log}) ...")
            gateway = _Gateway.start(settings_file, settings.data_dir, port or _free_port(), log)
            url = gateway.url
            token = _operator_token(settings)
        else:
            _Gateway(url).wait_ready(timeout_s=30)
        assert token is not None
        run_demo(settings, url, token, options, say=typer.echo)
    except (TrainerError, RuntimeError) as exc:
        _fail(str(exc), code=1)
    finally:
        if gateway is not None:
            gateway.stop()


def _operator_token(settings: Settings) -> str:
    """An ml_engineer token for the demo's own gateway (kept with the demo's tokens)."""
    from gateway.auth import TokenStore
    from redaction import load_or_create_key

    assert settings.tokens_file and settings.key_file
    store = TokenStore(settings.tokens_file, user_key=load_or_create_key(settings.key_file))
    return store.create(
        tenant=DEMO_TENANT, user="demo-operator", roles=["ml_engineer"], name="gristmill demo"
    )
