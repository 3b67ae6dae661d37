"""One turn of the feedback loop: snapshot -> train -> gate -> register -> canary.

    result = run_cycle(LoopConfig(...), make_build)   # make_build(since, until) -> BuildConfig

``run_cycle`` builds a dataset snapshot over the feedback that arrived since the previous
cycle (the state file remembers where the last one stopped), trains a LoRA adapter with the
default method (``auto``: what the snapshot holds), runs the evaluation gate against the active
version, registers the adapter as a candidate with its gate result and, when the gate passed,
promotes it to canary (``promote="canary"``, the default: the gateway's canary check then
promotes or rolls it back on live acceptance) or straight on to active (``promote="active"``,
for the demo, whose canary window is the time between those two promotions). A cycle with no
new feedback, or with too little for the method, ends as ``no_data`` and still moves the window.

Only one cycle runs at a time per state directory (an exclusive lock; a second one raises
``LoopBusyError``). Each cycle is appended to ``<state_dir>/cycles.jsonl``. Registry changes are
returned as audit events: the caller writes them (trainer does not import redaction).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.errors import EmptyTrainingSetError, InvalidConfigError, TrainerError

if TYPE_CHECKING:
    from trainer.datasets import BuildConfig
    from trainer.evaluate import GateConfig

__all__ = [
    "PROMOTE_TARGETS",
    "CycleResult",
    "LoopBusyError",
    "LoopConfig",
    "last_until",
    "run_cycle",
]

PROMOTE_TARGETS = ("none", "canary", "active")
_STATE_NAME = "state.json"
_CYCLES_NAME = "cycles.jsonl"
_LOCK_NAME = ".loop.lock"
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class LoopBusyError(TrainerError):
    """Another loop cycle holds the lock on this state directory."""

    http_status = 409
    title = "A loop cycle is already running"


@dataclass
class LoopConfig:
    """Where a cycle reads and writes, and how it trains, gates and promotes."""

    base_model_dir: Path = field(metadata={"help": "Base model the adapter is trained on."})
    registry_dir: Path = field(metadata={"help": "Model registry (data_dir/models/registry)."})
    runs_dir: Path = field(metadata={"help": "Training run directories (data_dir/runs)."})
    state_dir: Path = field(
        metadata={"help": "Loop state: last window end, cycle log, lock (data_dir/loop)."}
    )
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "TrainConfig fields (method, max_steps, learning_rate, ...)."},
    )
    gate: GateConfig | None = field(
        default=None, metadata={"help": "Evaluation gate settings; default GateConfig()."}
    )
    promote: str = field(
        default="canary",
        metadata={
            "help": "After a passed gate: none (stay candidate) | canary | active "
            "(canary, then active at once: the demo's short canary window)."
        },
    )
    actor: str = field(default="loop", metadata={"help": "Actor recorded in the audit log."})
    progress: bool = field(default=False, metadata={"help": "Show training progress bars."})

    def __post_init__(self) -> None:
        for name in ("base_model_dir", "registry_dir", "runs_dir", "state_dir"):
            setattr(self, name, Path(getattr(self, name)))
        if self.promote not in PROMOTE_TARGETS:
            raise InvalidConfigError(f"promote: must be one of {', '.join(PROMOTE_TARGETS)}")
        for reserved in ("snapshot_dir", "base_model_dir", "output_dir", "resume"):
            if reserved in self.train:
                raise InvalidConfigError(f"train.{reserved}: set by the loop, not by config")


@dataclass
class CycleResult:
    """What one cycle did; ``status`` is promoted | canary_busy | refused | registered | no_data."""

    cycle_id: str
    status: str
    since: str
    until: str
    snapshot_id: str | None = None
    snapshot_counts: dict[str, Any] = field(default_factory=dict)
    method: str | None = None
    steps: int | None = None
    version: str | None = None
    state: str | None = None
    gate: dict[str, Any] | None = None
    message: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The result without the gate's full numbers and the events (for printing)."""
        gate = self.gate or {}
        out = {k: v for k, v in self.to_json().items() if k not in ("gate", "events")}
        if gate:
            candidate, base = gate.get("candidate", {}), gate.get("base", {})
            out["gate"] = {
                "passed": gate.get("passed"),
                "checks": gate.get("checks"),
                "reasons": gate.get("reasons"),
                "candidate_perplexity": candidate.get("perplexity"),
                "base_perplexity": base.get("perplexity"),
            }
        return out


# ---------------------------------------------------------------- state


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LoopBusyError(f"state_dir: another loop cycle is running in {state_dir}") from exc
        yield
    finally:
        os.close(fd)


def _read_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / _STATE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidConfigError(f"state_dir: cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def last_until(state_dir: Path | str) -> datetime | None:
    """Where the previous cycle's window ended (None before the first cycle)."""
    value = _read_state(Path(state_dir)).get("last_until")
    return datetime.fromisoformat(value) if value else None


def _finish(config: LoopConfig, result: CycleResult) -> CycleResult:
    state = _read_state(config.state_dir)
    state.update(last_until=result.until, last_cycle=result.cycle_id, last_status=result.status)
    _write_json(config.state_dir / _STATE_NAME, state)
    with open(config.state_dir / _CYCLES_NAME, "a", encoding="utf-8") as fh:
        record = {k: v for k, v in result.to_json().items() if k != "events"}
        fh.write(json.dumps(record, sort_keys=True) + "\n")
    return result


# ---------------------------------------------------------------- the cycle


def run_cycle(
    config: LoopConfig,
    make_build: Callable[[datetime, datetime], BuildConfig],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    say: Callable[[str], None] | None = None,
) -> CycleResult:
    """One cycle over [since, until): by default from the previous cycle's end until now."""
    with _exclusive(config.state_dir):
        return _run(config, make_build, since, until, say or (lambda _: None))


def _run(
    config: LoopConfig,
    make_build: Callable[[datetime, datetime], BuildConfig],
    since: datetime | None,
    until: datetime | None,
    say: Callable[[str], None],
) -> CycleResult:
    from trainer.datasets import build_snapshot
    from trainer.evaluate import GateConfig, evaluate_candidate
    from trainer.registry import ModelRegistry
    from trainer.train import TrainConfig, resolve_method, train

    started = time.monotonic()
    until = until or datetime.now(UTC)
    since = since or last_until(config.state_dir) or _EPOCH
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidConfigError("since/until: must carry a timezone")
    cycle_id = until.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    result = CycleResult(cycle_id, "no_data", since.isoformat(), until.isoformat())
    if since >= until:
        result.message = "no new feedback window (since is not before until)"
        return _finish(config, result)

    say(f"snapshot: feedback from {since.isoformat()} to {until.isoformat()}")
    t0 = time.monotonic()
    snapshot = build_snapshot(make_build(since, until))
    result.timings["snapshot_s"] = round(time.monotonic() - t0, 3)
    result.snapshot_id = snapshot.id
    result.snapshot_counts = {
        name: (snapshot.card.get("counts", {}).get(name, {}) or {}).get("by_split", {})
        for name in ("pairs", "labels", "rewards", "sft")
    }
    say(f"snapshot {snapshot.id}: {json.dumps(result.snapshot_counts)}")

    registry = ModelRegistry(config.registry_dir)
    values = dict(config.train)
    values.update(
        snapshot_dir=snapshot.path,
        base_model_dir=config.base_model_dir,
        output_dir=config.runs_dir / f"loop-{cycle_id}",
    )
    t0 = time.monotonic()
    try:
        train_config = TrainConfig.from_mapping(values)
        trained = train(train_config, progress=config.progress)
    except EmptyTrainingSetError as exc:
        result.message = f"not enough feedback to train: {exc}"
        result.timings["total_s"] = round(time.monotonic() - started, 3)
        return _finish(config, result)
    result.timings["train_s"] = round(time.monotonic() - t0, 3)
    result.method = resolve_method(train_config.method, trained.metrics["snapshot_train_rows"])
    result.steps = trained.steps
    say(f"trained {result.method}: {trained.steps} steps in {result.timings['train_s']:.1f} s")

    active = registry.active()
    same_base = active is not None and active.base_model_hash == trained.base_model_hash
    t0 = time.monotonic()
    gate = evaluate_candidate(
        trained.adapter_dir,
        config.base_model_dir,
        snapshot.path,
        active_adapter=active.adapter_dir if same_base and active else None,
        active_version=active.id if same_base and active else None,
        config=config.gate or GateConfig(),
    )
    result.timings["gate_s"] = round(time.monotonic() - t0, 3)
    result.gate = gate.to_json()
    say(f"gate: {'passed' if gate.passed else 'refused'} ({result.timings['gate_s']:.1f} s)")

    card = snapshot.card
    version, event = registry.register_training(
        trained,
        base_model_dir=config.base_model_dir,
        card=card,
        training_config=train_config.to_json(),
        gate=result.gate,
        actor=config.actor,
    )
    result.events.append(event)
    result.version, result.state = version.id, "candidate"

    if not gate.passed:
        result.status = "refused"
        result.message = "; ".join(gate.reasons)
    elif config.promote == "none":
        result.status = "registered"
    elif registry.canary() is not None:
        busy = registry.canary()
        result.status = "canary_busy"
        result.message = (
            f"{busy.id if busy else '?'} is still the canary; {version.id} stays a candidate"
        )
    else:
        reason = f"loop cycle {cycle_id}: gate passed"
        result.events.append(registry.promote(version.id, actor=config.actor, reason=reason))
        result.state = "canary"
        if config.promote == "active":
            reason = f"loop cycle {cycle_id}: demo canary window closed"
            result.events.append(registry.promote(version.id, actor=config.actor, reason=reason))
            result.state = "active"
        result.status = "promoted"
    result.timings["total_s"] = round(time.monotonic() - started, 3)
    say(f"{version.id}: {result.state} ({result.status})")
    return _finish(config, result)
