"""Simulated developers with hidden company conventions, driving a gateway over real HTTP.

The loop benchmark (``gristmill demo``, bench/loop.py) needs feedback that a real team would
produce. Each simulated developer writes small Python files, function by function. In every
function there is one *hole*: a line where one of the company's conventions applies and that
the developer means to write in the house way (the intended line). At the hole the developer
asks the gateway for a completion through the Tabby-compatible API (``/tabby/v1/completions``,
prefix up to the cursor, the rest of the function as suffix), and then:

- **accepts** the suggestion unchanged when it *matches* what they meant;
- **accepts and edits** a *near miss* into what they meant;
- **dismisses** anything else and types the intended line by hand.

The conventions (hidden from the model, known to every developer):

=================  ===========================================  ===========================
name               the house way                                never
=================  ===========================================  ===========================
``log_wrapper``    ``log.info("save %s", order)``               ``print(...)``
``http_client``    ``response = http_client.get(url)``          ``requests``/``urllib``/``httpx``
``type_hints``     ``def clean_order(order: str) -> str:``      a ``def`` without hints
``app_error``      ``raise AppError("load order failed") from   ``pass``, ``print``, a bare
                   exc``                                        ``raise`` without ``from exc``
=================  ===========================================  ===========================

The decision rule (``judge``), on the suggestion's first non-blank line ``L`` and the intended
line ``T``, with ``sim`` the normalized edit similarity of feedback_store (whitespace runs
collapsed, ``1 - levenshtein / max length``):

1. ``L`` breaks the convention (a forbidden marker, or a required one missing): **dismiss**;
2. ``sim(L, T) >= ACCEPT_SIMILARITY`` (0.95) and nothing but blank lines follows ``L``:
   **accept** (the text stays as suggested);
3. ``sim(L, T) >= NEAR_MISS_SIMILARITY`` (0.6): **accept, then edit** into ``T`` (extra lines
   after a matching first line are deleted, which is an edit too);
4. otherwise: **dismiss**, and write ``T`` by hand.

What the gateway sees, as from Tabby's extension plus a native telemetry plugin:
a ``view`` event for every suggestion shown; ``select`` (accept) or ``dismiss`` (with the
reading time as ``elapsed``, above the signal rules' minimum visible time); for an edit a native
``edited`` event with the final text; for every accepted suggestion a native ``survived`` event
(``window_s`` 30) with the text that stands at that spot. Hand-written text is visible only in
the prefixes of later requests in the same file (the server-side inference of the dataset
rules), as with Tabby's and Continue's clients; so after the last hole of a file the developer
types on and triggers one more completion that is never shown (``trailing_request``).

Everything is deterministic from a seed: the population, the files, the holes and the reading
times. Held-out developers draw identifiers from a separate pool, so their prompts never occur
in training data.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from feedback_store import edit_similarity
from trainer.errors import TrainerError

__all__ = [
    "ACCEPT_SIMILARITY",
    "CONVENTIONS",
    "HELD_OUT_NAMES",
    "NEAR_MISS_SIMILARITY",
    "TRAINING_NAMES",
    "Convention",
    "Decision",
    "Developer",
    "GatewayClient",
    "Hole",
    "SessionReport",
    "SimulatorError",
    "SourceFile",
    "TaskResult",
    "judge",
    "make_population",
    "run_developer",
    "run_population",
]

ACCEPT_SIMILARITY = 0.95
NEAR_MISS_SIMILARITY = 0.6
SURVIVAL_WINDOW_S = 30.0
CLIENT_NAME = "gristmill-simulator"

# Identifiers the training developers use; held-out developers use the other pool only.
TRAINING_NAMES = (
    "order", "user", "price", "item", "event", "record", "payload", "result", "batch", "token",
    "config", "message", "report", "entry", "status", "answer", "buffer", "query", "value",
    "handle", "profile", "invoice_line", "cart", "device", "job", "metric", "note", "rule",
    "shipment", "task", "vendor", "widget",
)  # fmt: skip
HELD_OUT_NAMES = (
    "ticket", "account", "session", "upload", "cursor", "coupon", "booking", "license", "parcel",
    "survey", "voucher", "warehouse",
)  # fmt: skip


class SimulatorError(TrainerError):
    """The simulated developers could not talk to the gateway (it answered an error or is down)."""

    http_status = 502
    title = "Simulator cannot reach the gateway"


# ---------------------------------------------------------------- conventions and holes


@dataclass(frozen=True)
class Hole:
    """One place where a convention applies: the code around it and what the developer means."""

    convention: str
    before: str  # typed before the cursor (the function so far, ending at the hole's indent)
    intended: str  # the line the developer means, without indentation
    after: str  # the rest of the function, already typed (the request's suffix)


@dataclass(frozen=True)
class Convention:
    """A house rule: how to make a hole, and whether a line follows the rule."""

    name: str
    description: str
    make: Callable[[random.Random, str], Hole]
    follows: Callable[[str], bool]


def _log_hole(rng: random.Random, name: str) -> Hole:
    verb = rng.choice(("save", "update", "delete", "send", "archive"))
    return Hole(
        "log_wrapper",
        f"def {verb}_{name}({name}):\n    store.{verb}({name})\n    ",
        f'log.info("{verb} %s", {name})',
        f"\n    return {name}\n",
    )


def _http_hole(rng: random.Random, name: str) -> Hole:
    verb, method = rng.choice((("fetch", "get"), ("create", "post"), ("remove", "delete")))
    return Hole(
        "http_client",
        f'def {verb}_{name}({name}_id):\n    url = f"{{BASE_URL}}/{name}/{{{name}_id}}"\n    ',
        f"response = http_client.{method}(url)",
        "\n    response.raise_for_status()\n    return response.json()\n",
    )


def _typed_hole(rng: random.Random, name: str) -> Hole:
    verb, arg, ret, body = rng.choice(
        (
            ("clean", "str", "str", f"{name}.strip()"),
            ("count", "list", "int", f"len({name})"),
            ("check", "dict", "bool", f"bool({name})"),
        )
    )
    return Hole(
        "type_hints",
        f"# {verb} the {name}\n",
        f"def {verb}_{name}({name}: {arg}) -> {ret}:",
        f"\n    return {body}\n",
    )


def _error_hole(rng: random.Random, name: str) -> Hole:
    verb = rng.choice(("load", "parse", "read"))
    error = rng.choice(("OSError", "ValueError", "KeyError"))
    return Hole(
        "app_error",
        f"def {verb}_{name}(path):\n    try:\n        return {verb}_file(path)\n"
        f"    except {error} as exc:\n        ",
        f'raise AppError("{verb} {name} failed") from exc',
        f"\n    finally:\n        close_{name}(path)\n",
    )


_TYPED_DEF = re.compile(r"^def \w+\(\w+: \w+\) -> \w+:$")


def _has(line: str, required: Sequence[str], forbidden: Sequence[str] = ()) -> bool:
    return all(m in line for m in required) and not any(m in line for m in forbidden)


CONVENTIONS: dict[str, Convention] = {
    c.name: c
    for c in (
        Convention(
            "log_wrapper",
            "log through the company logger (log.info), never print",
            _log_hole,
            lambda line: _has(line, ("log.info(",), ("print(",)),
        ),
        Convention(
            "http_client",
            "HTTP through the internal http_client, never requests/urllib/httpx",
            _http_hole,
            lambda line: _has(line, ("http_client.",), ("requests.", "urllib", "httpx.")),
        ),
        Convention(
            "type_hints",
            "every new function has type hints on its parameters and return",
            _typed_hole,
            lambda line: bool(_TYPED_DEF.match(line.strip())),
        ),
        Convention(
            "app_error",
            "errors are re-raised as AppError(...) from exc, never swallowed",
            _error_hole,
            lambda line: _has(line, ("raise AppError(", "from exc"), ("print(",)),
        ),
    )
}


# ---------------------------------------------------------------- the decision rule


@dataclass(frozen=True)
class Decision:
    """What the developer does with one suggestion."""

    action: str  # accept | edit | dismiss
    similarity: float  # of the suggestion's first non-blank line to the intended line
    follows_convention: bool
    final_text: str  # what stands at the hole afterwards

    @property
    def accepted(self) -> bool:
        return self.action in ("accept", "edit")


def _first_line(text: str) -> tuple[str, str]:
    """(first non-blank line stripped, everything after it)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip():
            return line.strip(), "\n".join(lines[i + 1 :])
    return "", ""


def judge(suggestion: str, intended: str, convention: str) -> Decision:
    """The documented rule of the module docstring."""
    rule = CONVENTIONS[convention]
    first, rest = _first_line(suggestion)
    follows = bool(first) and rule.follows(first)
    similarity = edit_similarity(first, intended) if first else 0.0
    if follows and similarity >= ACCEPT_SIMILARITY and not rest.strip():
        return Decision("accept", similarity, True, suggestion.strip("\n").strip())
    if follows and similarity >= NEAR_MISS_SIMILARITY:
        return Decision("edit", similarity, True, intended)
    return Decision("dismiss", similarity, follows, intended)


# ---------------------------------------------------------------- the population


@dataclass(frozen=True)
class SourceFile:
    path: str
    holes: tuple[Hole, ...]


@dataclass(frozen=True)
class Developer:
    name: str
    files: tuple[SourceFile, ...]

    @property
    def holes(self) -> int:
        return sum(len(f.holes) for f in self.files)


def make_population(
    seed: int,
    *,
    developers: int,
    files_per_developer: int,
    holes_per_file: int = 2,
    names: Sequence[str] = TRAINING_NAMES,
    prefix: str = "dev",
    conventions: Sequence[str] | None = None,
) -> list[Developer]:
    """Developers and their files, deterministic from ``seed``. Each file's holes use different
    conventions (so no file shows the model the same convention twice)."""
    chosen = list(conventions or CONVENTIONS)
    unknown = sorted(set(chosen) - set(CONVENTIONS))
    if unknown:
        raise ValueError(f"conventions: unknown {unknown} (known: {sorted(CONVENTIONS)})")
    for label, value in (
        ("developers", developers),
        ("files_per_developer", files_per_developer),
        ("holes_per_file", holes_per_file),
    ):
        if value < 1:
            raise ValueError(f"{label}: must be >= 1")
    if holes_per_file > len(chosen):
        raise ValueError(f"holes_per_file: at most {len(chosen)} (one per convention)")
    if not names:
        raise ValueError("names: needs at least one identifier")
    rng = random.Random(f"gristmill-simulator:{seed}:{prefix}")
    population = []
    for d in range(developers):
        files = []
        for f in range(files_per_developer):
            kinds = rng.sample(chosen, holes_per_file)
            used: set[str] = set()
            holes = []
            for kind in kinds:
                name = rng.choice([n for n in names if n not in used] or list(names))
                used.add(name)
                holes.append(CONVENTIONS[kind].make(rng, name))
            files.append(SourceFile(f"src/{prefix}{d}/module_{f}.py", tuple(holes)))
        population.append(Developer(f"{prefix}{d}", tuple(files)))
    return population


# ---------------------------------------------------------------- HTTP


class GatewayClient:
    """A small JSON-over-HTTP client (stdlib, keep-alive) with one developer's token."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 120.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: {url!r} is not an http(s) URL")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._token = token
        self._timeout = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send and return the decoded JSON (None for an empty body); errors raise
        SimulatorError naming the path and status."""
        data = None if body is None else json.dumps(body).encode()
        headers = {
            "Authorization": f"Bearer {self._token}",
            "User-Agent": f"{CLIENT_NAME}/1.0",
            "Accept": "application/json",
        }
        if data is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once
            try:
                conn = self._connection()
                conn.request(method, self._base + path, body=data, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise SimulatorError(f"{method} {path}: gateway unreachable: {exc}") from exc
        if response.status >= 400:
            detail = raw.decode("utf-8", "replace")[:300]
            raise SimulatorError(f"{method} {path}: HTTP {response.status}: {detail}")
        return json.loads(raw) if raw.strip() else None


# ---------------------------------------------------------------- running developers


@dataclass(frozen=True)
class TaskResult:
    developer: str
    file_path: str
    convention: str
    completion_id: str
    suggestion: str
    intended: str
    action: str
    similarity: float
    follows_convention: bool
    latency_s: float


@dataclass
class SessionReport:
    """What a set of developers did; ``acceptance`` is accepted (as-is or edited) / shown."""

    results: list[TaskResult] = field(default_factory=list)
    requests: int = 0
    events: int = 0
    seconds: float = 0.0

    @property
    def shown(self) -> int:
        return len(self.results)

    def count(self, action: str, convention: str | None = None) -> int:
        return sum(
            1
            for r in self.results
            if r.action == action and (convention is None or r.convention == convention)
        )

    def acceptance(self, convention: str | None = None) -> float:
        rows = [r for r in self.results if convention is None or r.convention == convention]
        if not rows:
            return 0.0
        return sum(1 for r in rows if r.action in ("accept", "edit")) / len(rows)

    def exact_acceptance(self, convention: str | None = None) -> float:
        rows = [r for r in self.results if convention is None or r.convention == convention]
        return sum(1 for r in rows if r.action == "accept") / len(rows) if rows else 0.0

    def merge(self, other: SessionReport) -> None:
        self.results.extend(other.results)
        self.requests += other.requests
        self.events += other.events
        self.seconds += other.seconds

    def summary(self) -> dict[str, Any]:
        return {
            "shown": self.shown,
            "accepted": self.count("accept"),
            "edited": self.count("edit"),
            "dismissed": self.count("dismiss"),
            "acceptance": round(self.acceptance(), 4),
            "exact_acceptance": round(self.exact_acceptance(), 4),
            "by_convention": {
                name: round(self.acceptance(name), 4)
                for name in CONVENTIONS
                if any(r.convention == name for r in self.results)
            },
            "requests": self.requests,
            "events": self.events,
            "seconds": round(self.seconds, 2),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "results": [asdict(r) for r in self.results]}


def _reading_ms(rng: random.Random) -> float:
    return float(rng.randint(1200, 4000))


def _complete(client: GatewayClient, path: str, prefix: str, suffix: str) -> tuple[str, str]:
    body = {
        "language": "python",
        "segments": {"prefix": prefix, "suffix": suffix, "filepath": path},
    }
    answer = client.request("POST", "/tabby/v1/completions", body)
    try:
        return answer["id"], answer["choices"][0]["text"] if answer["choices"] else ""
    except (KeyError, IndexError, TypeError) as exc:
        raise SimulatorError(f"/tabby/v1/completions: unexpected answer {answer!r}") from exc


def run_developer(
    client: GatewayClient,
    developer: Developer,
    *,
    seed: int = 0,
    trailing_request: bool = True,
) -> SessionReport:
    """One developer works through their files against the gateway (see the module docstring)."""
    rng = random.Random(f"gristmill-simulator-session:{seed}:{developer.name}")
    report = SessionReport()
    started = time.monotonic()
    for source in developer.files:
        text = ""
        for hole in source.holes:
            if text:
                text += "\n\n"
            prefix = text + hole.before
            t0 = time.monotonic()
            completion_id, suggestion = _complete(client, source.path, prefix, hole.after)
            latency = time.monotonic() - t0
            report.requests += 1
            decision = judge(suggestion, hole.intended, hole.convention)
            report.events += _report_events(client, rng, completion_id, suggestion, decision)
            report.results.append(
                TaskResult(
                    developer=developer.name,
                    file_path=source.path,
                    convention=hole.convention,
                    completion_id=completion_id,
                    suggestion=suggestion,
                    intended=hole.intended,
                    action=decision.action,
                    similarity=round(decision.similarity, 4),
                    follows_convention=decision.follows_convention,
                    latency_s=round(latency, 4),
                )
            )
            text = prefix + decision.final_text + hole.after.rstrip("\n")
        if trailing_request:
            # Typing on below the last function: the request that shows the file as it stands
            # (the suggestion is never displayed, so it sends no events).
            _complete(client, source.path, text + "\n\n\n", "")
            report.requests += 1
    report.seconds = time.monotonic() - started
    return report


def _report_events(
    client: GatewayClient,
    rng: random.Random,
    completion_id: str,
    suggestion: str,
    decision: Decision,
) -> int:
    view_id = f"view-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}"
    elapsed = _reading_ms(rng)
    client.request(
        "POST", "/tabby/v1/events", {"type": "view", "completion_id": completion_id,
                                     "choice_index": 0, "view_id": view_id},
    )  # fmt: skip
    kind = "select" if decision.accepted else "dismiss"
    client.request(
        "POST", "/tabby/v1/events", {"type": kind, "completion_id": completion_id,
                                     "choice_index": 0, "view_id": view_id, "elapsed": elapsed},
    )  # fmt: skip
    if not decision.accepted:
        return 2
    suggestion_id = f"{completion_id}-0"
    native: list[dict[str, Any]] = []
    if decision.action == "edit":
        native.append(
            {
                "event_id": f"{suggestion_id}:edited",
                "suggestion_id": suggestion_id,
                "type": "edited",
                "final_text": decision.final_text,
            }
        )
    native.append(
        {
            "event_id": f"{suggestion_id}:survived:{SURVIVAL_WINDOW_S:g}",
            "suggestion_id": suggestion_id,
            "type": "survived",
            "window_s": SURVIVAL_WINDOW_S,
            "final_text": decision.final_text,
        }
    )
    client.request("POST", "/v1/telemetry/events", {"events": native})
    return 2 + len(native)


def run_population(
    url: str,
    tokens: dict[str, str],
    population: Iterable[Developer],
    *,
    seed: int = 0,
    trailing_request: bool = True,
    on_developer: Callable[[Developer, SessionReport], None] | None = None,
) -> SessionReport:
    """Every developer in turn, each with their own token (``tokens[developer.name]``)."""
    total = SessionReport()
    for developer in population:
        token = tokens.get(developer.name)
        if not token:
            raise ValueError(f"tokens: no token for developer {developer.name!r}")
        client = GatewayClient(url, token)
        try:
            report = run_developer(client, developer, seed=seed, trailing_request=trailing_request)
        finally:
            client.close()
        total.merge(report)
        if on_developer is not None:
            on_developer(developer, report)
    return total
