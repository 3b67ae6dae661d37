"""Dataset snapshot build time and peak memory over a synthetic store of 10 million events.

One command: `python bench/datasets.py`. It writes a synthetic feedback store straight into the
store's Parquet layout (`suggestions|events/tenant=<t>/date=<d>/part-<n>.parquet`, the stored
schemas), then runs `build_snapshot` in a child process (2 DuckDB threads) and reports its wall
time and the child's peak RSS against the targets (60 s, 4 GB on 2 cores). Its baseline, run
by the same script just before and after the build: one DuckDB pass reading and hashing every
stored text (see run_reference), this machine's streaming speed at the time.

The store is made of editing sessions: a developer writes lines into a file; while typing,
the client asks for completions at keystroke pauses (shown briefly, then replaced); at the end
of a pause a suggestion stays visible and is accepted (~30% of those) or dismissed, in which
case the developer types the line by hand. Accepted lines are later kept, edited, re-indented
or deleted, and every later request carries the file as it then stands. Clients: a native
plugin (shown/accepted/rejected with elapsed times, survived at 30 s/2/5/10 min, some partial
accepts and multi-choice requests), the Tabby agent (view/select/dismiss), OpenAI-API plugins
(no events at all: outcomes are inferred) and Continue (dev-data records twinned with the
request the gateway served).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feedback_store import EVENT_SCHEMA, SUGGESTION_SCHEMA  # noqa: E402
from trainer.datasets import DEFAULT_MEMORY_LIMIT  # noqa: E402

TARGET_S = 60.0
TARGET_BYTES = 4 * 1024**3
T0 = datetime(2025, 6, 2, 8, 0, tzinfo=UTC)
WINDOWS = (30.0, 120.0, 300.0, 600.0)
CLIENTS = (("native", 0.35), ("tabby", 0.35), ("openai", 0.2), ("continue", 0.1))
NAMES = [
    "total",
    "items",
    "price",
    "count",
    "result",
    "value",
    "index",
    "offset",
    "buffer",
    "cache",
    "config",
    "request",
    "response",
    "user",
    "order",
    "amount",
    "rate",
    "limit",
    "path",
    "row",
]
FUNCS = [
    "compute",
    "load",
    "parse",
    "merge",
    "render",
    "fetch",
    "update",
    "check",
    "apply",
    "scale",
]


class Store:
    """Buffers rows per partition and writes them as numbered part files."""

    def __init__(self, root: Path, rows_buffered: int = 300_000) -> None:
        self.root = root
        self.rows_buffered = rows_buffered
        self.buffers: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
        self.pending = 0
        self.batch = 0
        self.counts = {"suggestions": 0, "events": 0}

    def add(self, folder: str, row: dict[str, Any]) -> None:
        key = (
            folder,
            row["tenant"],
            (row["created_at"] if folder == "suggestions" else row["ts"]).date().isoformat(),
        )
        self.buffers[key].append(row)
        self.counts[folder] += 1
        self.pending += 1
        if self.pending >= self.rows_buffered:  # one landing: a file per partition touched
            self.close()
            self.pending = 0

    def flush(self, key: tuple[str, str, str]) -> None:
        rows = self.buffers.pop(key, [])
        if not rows:
            return
        folder, tenant, day = key
        self.batch += 1
        directory = self.root / folder / f"tenant={tenant}" / f"date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        schema = SUGGESTION_SCHEMA if folder == "suggestions" else EVENT_SCHEMA
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, directory / f"part-{self.batch:020d}.parquet", compression="zstd")

    def close(self) -> None:
        for key in list(self.buffers):
            self.flush(key)


def code_line(rng: random.Random, indent: int) -> str:
    a, b = rng.choice(NAMES), rng.choice(NAMES)
    shape = rng.random()
    if shape < 0.4:
        text = f"{a}_{rng.randint(0, 99)} = {rng.choice(FUNCS)}({b}, {rng.randint(1, 999)})"
    elif shape < 0.7:
        text = f"{a} += {b}.{rng.choice(NAMES)} * {rng.randint(2, 9)}"
    elif shape < 0.85:
        text = f"if {a} > {b}_{rng.randint(0, 9)}: {rng.choice(FUNCS)}({a})"
    else:
        text = f"return {rng.choice(FUNCS)}_{a}({b}, key={rng.randint(0, 9999)})"
    return " " * indent + text


def wrong_line(rng: random.Random, true: str, indent: int) -> str:
    if rng.random() < 0.5:
        return code_line(rng, indent)
    return true.replace(rng.choice(NAMES), rng.choice(NAMES), 1) + " + 1"


class Session:
    """One developer writing lines into one file; yields records into the store."""

    def __init__(self, rng: random.Random, store: Store, ids: dict[str, int], **ctx: Any) -> None:
        self.rng, self.store, self.ids = rng, store, ids
        self.ctx = ctx
        self.lines = [code_line(rng, 4 * rng.randint(0, 2)) for _ in range(rng.randint(30, 80))]
        self.cursor = rng.randint(10, len(self.lines))
        self.pending_edits: list[tuple[datetime, int, str]] = []

    def next_id(self, kind: str) -> str:
        self.ids[kind] += 1
        return f"{kind}-{self.ids[kind]:x}"

    def window(self, partial: str) -> tuple[str, str]:
        above = self.lines[max(0, self.cursor - 36) : self.cursor]
        below = self.lines[self.cursor : self.cursor + 12]
        prefix = "\n".join(above) + "\n" + partial
        suffix = "\n" + "\n".join(below) + "\n"
        return prefix, suffix

    def apply_edits(self, now: datetime) -> None:
        due = [e for e in self.pending_edits if e[0] <= now]
        if not due:
            return
        self.pending_edits = [e for e in self.pending_edits if e[0] > now]
        for _, line_id, kind in due:
            index = next((i for i, (lid, _) in enumerate(self.line_ids) if lid == line_id), None)
            if index is None:
                continue
            text = self.lines[index]
            if kind == "delete":
                del self.lines[index]
                del self.line_ids[index]
                if index < self.cursor:
                    self.cursor -= 1
                continue
            if kind == "edit":
                text = text.replace("(", "(self, ", 1) if "(" in text else text + "  # fixed"
            elif kind == "reindent":
                text = "    " + text
            self.lines[index] = text
            self.line_ids[index] = (line_id, text)

    def run(self, start: datetime, n_lines: int) -> datetime:
        rng, _ctx = self.rng, self.ctx
        self.line_ids = [(-i - 1, line) for i, line in enumerate(self.lines)]
        now = start
        for _ in range(n_lines):
            self.apply_edits(now)
            indent = len(self.lines[self.cursor - 1]) - len(self.lines[self.cursor - 1].lstrip())
            true = code_line(rng, indent)
            stops = sorted({indent, *rng.sample(range(indent, len(true)), k=rng.randint(0, 3))})
            outcome_line, fate = true, None
            for j, typed in enumerate(stops):
                last = j == len(stops) - 1
                partial = true[:typed]
                good = rng.random() < (0.55 if last else 0.35)
                completion = true[typed:] if good else wrong_line(rng, true, indent)[typed:]
                visible_ms = rng.uniform(800, 6000) if last else rng.uniform(120, 450)
                accepted = last and (rng.random() < (0.55 if good else 0.06))
                text, fate = self.request(now, partial, completion, visible_ms, accepted, last)
                if accepted:
                    outcome_line = partial + text
                now += timedelta(milliseconds=visible_ms + rng.uniform(50, 300))
            line_id = self.ids["line"] = self.ids["line"] + 1
            self.lines.insert(self.cursor, outcome_line)
            self.line_ids.insert(self.cursor, (line_id, outcome_line))
            self.cursor += 1
            if fate is not None:
                self.pending_edits.append((fate[1], line_id, fate[0]))
            now += timedelta(seconds=rng.uniform(0.5, 8))
        return now

    def request(
        self,
        now: datetime,
        partial: str,
        completion: str,
        visible_ms: float,
        accepted: bool,
        long_visible: bool,
    ) -> tuple[str, tuple[str, datetime] | None]:
        """Records one request; returns the text that went in and the later fate of the line."""
        rng, ctx, store = self.rng, self.ctx, self.store
        client = ctx["client"]
        prefix, suffix = self.window(partial)
        request_id = self.next_id("cmpl")
        choices = [completion]
        if client == "native" and long_visible and rng.random() < 0.1:
            choices.append(code_line(rng, 0).strip())
        base = {
            "record_type": "suggestion",
            "request_id": request_id,
            "tenant": ctx["tenant"],
            "team": "core",
            "repo": ctx["repo"],
            "user_hash": ctx["user"],
            "client_name": client,
            "client_version": "1.0",
            "source": "tabby" if client == "tabby" else "openai",
            "language": "python",
            "file_path": ctx["file"] if client != "continue" else None,
            "prefix": prefix,
            "suffix": suffix,
            "model_version": "gristmill-base@3",
            "backend": "embedded",
            "latency_ms": 40.0,
            "created_at": now,
            "policy_version": "sha256:4be1c0de",
            "redaction_counts": {},
            "prompt_template": "qwen-fim-v1",
        }
        ids = []
        for index, text in enumerate(choices):
            sid = f"{request_id}-{index}"
            ids.append(sid)
            store.add(
                "suggestions",
                {**base, "suggestion_id": sid, "completion": text, "choice_index": index},
            )
        sid = ids[0]
        if client == "continue":
            # Continue logs its own record of the completion it showed (with the file path).
            alias = f"continue-{request_id}"
            store.add(
                "suggestions",
                {
                    **base,
                    "suggestion_id": alias,
                    "request_id": alias,
                    "source": "continue",
                    "client_name": "continue",
                    "file_path": ctx["file"],
                    "created_at": now + timedelta(milliseconds=visible_ms),
                    "prompt_template": None,
                    "completion": completion,
                    "choice_index": 0,
                },
            )
            at = now + timedelta(milliseconds=visible_ms)
            self.event(alias, "shown", at, "continue")
            self.event(
                alias,
                "accepted" if accepted else "rejected",
                at,
                "continue",
                accept_kind="full" if accepted else None,
                accepted_text=completion if accepted else None,
            )
            return completion, self.fate(now) if accepted else None
        if client == "openai":
            return completion, self.fate(now) if accepted else None
        source = "native" if client == "native" else "tabby"
        self.event(sid, "shown", now + timedelta(milliseconds=30), source)
        decided = now + timedelta(milliseconds=visible_ms)
        if not accepted:
            self.event(sid, "rejected", decided, source, elapsed_ms=visible_ms)
            return completion, None
        text = completion
        kind = "full"
        if source == "native" and rng.random() < 0.08:
            kind = "word"
            text = completion.split(" ")[0] or completion
        self.event(
            sid,
            "accepted",
            decided,
            source,
            accept_kind=kind,
            accepted_text=text if kind != "full" else None,
            elapsed_ms=visible_ms,
        )
        fate = self.fate(decided)
        if source == "native":
            self.survival(sid, decided, text, fate)
        return text, fate

    def fate(self, accepted_at: datetime) -> tuple[str, datetime] | None:
        """What later happens to an accepted line: kept (None), edited, deleted, re-indented."""
        roll = self.rng.random()
        if roll >= 0.3:
            return None
        kind = "edit" if roll < 0.17 else "delete" if roll < 0.24 else "reindent"
        return kind, accepted_at + timedelta(seconds=self.rng.uniform(5, 400))

    def survival(
        self, sid: str, accepted_at: datetime, text: str, fate: tuple[str, datetime] | None
    ) -> None:
        for window in WINDOWS:
            at = accepted_at + timedelta(seconds=window)
            final = text
            if fate is not None and fate[1] <= at:
                final = {
                    "delete": "",
                    "edit": text.replace("(", "(self, ", 1) if "(" in text else text + "  # fixed",
                    "reindent": "    " + text,
                }[fate[0]]
            self.event(sid, "survived", at, "native", window_s=window, final_text=final)

    def event(self, sid: str, type_: str, at: datetime, source: str, **fields: Any) -> None:
        self.store.add(
            "events",
            {
                "record_type": "event",
                "event_id": self.next_id("ev"),
                "suggestion_id": sid,
                "tenant": self.ctx["tenant"],
                "user_hash": self.ctx["user"],
                "type": type_,
                "ts": at,
                "accepted_text": fields.get("accepted_text"),
                "final_text": fields.get("final_text"),
                "accept_kind": fields.get("accept_kind"),
                "elapsed_ms": fields.get("elapsed_ms"),
                "window_s": fields.get("window_s"),
                "client_name": self.ctx["client"],
                "source": source,
                "policy_version": "sha256:4be1c0de",
                "redaction_counts": {},
                "received_at": at,
            },
        )


def generate(root: Path, events: int, seed: int) -> tuple[dict[str, int], datetime]:
    rng = random.Random(seed)
    store = Store(root)
    ids: dict[str, int] = defaultdict(int)
    users = [(f"t{u % 3}", f"user-{u:04d}") for u in range(400)]
    clocks = {user: T0 + timedelta(minutes=rng.uniform(0, 60)) for _, user in users}
    last = T0
    while store.counts["events"] < events:
        tenant, user = rng.choice(users)
        client = rng.choices([c for c, _ in CLIENTS], [w for _, w in CLIENTS])[0]
        ctx = {
            "tenant": tenant,
            "user": user,
            "client": client,
            "repo": f"{tenant}/service-{rng.randint(0, 9)}",
            "file": f"src/module_{rng.randint(0, 39)}.py",
        }
        start = clocks[user]
        end = Session(rng, store, ids, **ctx).run(start, rng.randint(8, 40))
        clocks[user] = end + timedelta(minutes=rng.uniform(1, 90))
        last = max(last, clocks[user])
    store.close()
    return store.counts, last


def run_build(
    parquet: Path, out: Path, until: datetime, threads: int, memory: str, sql_matcher: bool
) -> dict:
    code = f"""
import json, sys, time
from datetime import datetime
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from pathlib import Path
from trainer.datasets import BuildConfig, build_snapshot, load_rules
begin = time.perf_counter()
snap = build_snapshot(BuildConfig(
    parquet_dir=Path({str(parquet)!r}), datasets_dir=Path({str(out)!r}),
    since=datetime.fromisoformat({T0.isoformat()!r}),
    until=datetime.fromisoformat({until.isoformat()!r}),
    rules=load_rules(), context_key=b"bench-key", threads={threads}, memory_limit={memory!r}),
    progress=lambda line: print(line, file=sys.stderr, flush=True))
print(json.dumps({{"seconds": time.perf_counter() - begin, "id": snap.id,
                  "counts": snap.card["counts"], "outcomes": snap.card["outcomes"],
                  "exclusions": snap.card["exclusions"],
                  "considered": snap.card["suggestions_considered"],
                  "evidence": snap.card["evidence"], "methods": snap.card["inference_methods"],
                  "timings": snap.card["timings_s"], "matcher": snap.card["matcher"]}}))
"""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, user_before, kernel_before = usage.ru_maxrss, usage.ru_utime, usage.ru_stime
    env = dict(os.environ, **({"GRISTMILL_NATIVE": "0"} if sql_matcher else {}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_kb = usage.ru_maxrss
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"build failed with exit code {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["peak_bytes"] = max(peak_kb, before) * 1024
    # Kernel time is mostly page faults: memory freed and faulted in (zeroed) again.
    result["user_seconds"] = usage.ru_utime - user_before
    result["kernel_seconds"] = usage.ru_stime - kernel_before
    result["cpu_seconds"] = result["user_seconds"] + result["kernel_seconds"]
    return result


REFERENCE_SQL = """
SELECT count(*), sum(hash(prefix, suffix, completion) % 1024) FROM read_parquet($files)
"""


def run_reference(parquet: Path, threads: int, memory: str) -> float:
    """The baseline of this machine, now: DuckDB (same threads, memory limit) reading every
    stored suggestion's texts and hashing them once, in a child process like the build. It
    tells a slower machine from a slower build. It does not follow everything that makes a build
    slower: on 2026-12-07 it took 2.0-2.5 s all day while the same build went from 101 to 134 s
    (the build's memory-heavy work slowed, user and kernel time alike)."""
    code = f"""
import json, time
import duckdb
from pathlib import Path
files = sorted(str(p) for p in Path({str(parquet)!r}).glob("suggestions/**/*.parquet"))
con = duckdb.connect(config={{"threads": {threads}, "memory_limit": {memory!r}}})
con.execute("SET enable_progress_bar = false")
begin = time.perf_counter()
con.execute({REFERENCE_SQL!r}, {{"files": files}}).fetchall()
print(json.dumps(time.perf_counter() - begin))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"reference pass failed with exit code {proc.returncode}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1]))


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events to generate")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads for the build")
    parser.add_argument("--memory-limit", default=DEFAULT_MEMORY_LIMIT, help="DuckDB memory limit")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated store")
    parser.add_argument(
        "--store", type=Path, default=None, help="reuse a store generated earlier (--keep)"
    )
    parser.add_argument(
        "--sql-matcher",
        action="store_true",
        help="match later requests in DuckDB SQL, not the compiled matcher (for comparison)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-datasets-", dir=args.dir))
    try:
        if args.store is not None:
            parquet = args.store
            until = datetime.fromisoformat((parquet / "until.txt").read_text().strip())
            counts = json.loads((parquet / "counts.json").read_text())
        else:
            parquet = work / "parquet"
            begin = time.perf_counter()
            counts, last = generate(parquet, args.events, args.seed)
            until = last + timedelta(hours=1)
            (parquet / "until.txt").write_text(until.isoformat())
            (parquet / "counts.json").write_text(json.dumps(counts))
            size = sum(p.stat().st_size for p in parquet.rglob("*.parquet"))
            elapsed = time.perf_counter() - begin
            print(
                f"generated {counts['events']:,} events and {counts['suggestions']:,} suggestions "
                f"({size / 1e9:.2f} GB of Parquet) in {elapsed:.0f} s: {parquet}"
            )
        # Before the build: during it, its own threads (DuckDB's and the writers') load the
        # cores too.
        load = os.getloadavg()[0]
        before = run_reference(parquet, args.threads, args.memory_limit)
        result = run_build(
            parquet, work / "datasets", until, args.threads, args.memory_limit, args.sql_matcher
        )
        after = run_reference(parquet, args.threads, args.memory_limit)
        rows = {name: c["rows"] for name, c in result["counts"].items()}
        print(f"snapshot {result['id']}: rows {rows}")
        print(f"outcomes {result['outcomes']}")
        print(f"exclusions {result['exclusions']}")
        print(f"evidence {result['evidence']}  inference methods {result['methods']}")
        print("stages (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result["timings"].items()))
        seconds, peak = result["seconds"], result["peak_bytes"]
        print(
            f"build: {seconds:.1f} s (target {TARGET_S:.0f} s, ratio {seconds / TARGET_S:.2f}); "
            f"peak RSS {peak / 1024**3:.2f} GB (target 4 GB, ratio {peak / TARGET_BYTES:.2f}); "
            f"{counts['events']:,} events, {args.threads} threads, {result['matcher']} matcher"
        )
        print(
            f"CPU: {result['cpu_seconds']:.0f} s over {seconds:.0f} s "
            f"({result['cpu_seconds'] / seconds:.2f} cores busy; "
            f"user {result['user_seconds']:.0f} s, kernel {result['kernel_seconds']:.0f} s); "
            f"load average before the "
            f"build {load:.1f} (other processes on these cores slow the build down)"
        )
        reference = (before + after) / 2
        print(
            f"baseline: one pass reading and hashing every stored text took {before:.2f} s before "
            f"the build and {after:.2f} s after; the build took {seconds / reference:.1f} passes "
            f"(60 s is {TARGET_S / reference:.1f} passes on this machine now)"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
