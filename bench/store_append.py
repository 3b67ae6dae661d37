"""Durable append throughput of the feedback store vs plain file writes, same run.

One command: `python bench/store_append.py`. For batch sizes 1, 16 and 256 (records of ~2 KB),
it measures FeedbackStore.append (validate + encode + write + group-commit fsync, durable on
return) from one thread, and against it two baselines on the same disk and the same bytes:
a plain unsynced os.write, and os.write + fdatasync (the floor any durable append pays).
A last row runs 8 threads appending 16-record batches to show group commit sharing fsyncs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from feedback_store import FeedbackStore  # noqa: E402

BATCH_SIZES = (1, 16, 256)
_T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
_CONTEXT = "".join(f"    total += item.price * {j}  # line {j} of the file\n" for j in range(36))


def record(i: int) -> dict[str, Any]:
    """A suggestion record of about 2 KB once encoded."""
    return {
        "record_type": "suggestion",
        "suggestion_id": f"cmpl-{i:012d}-0",
        "request_id": f"cmpl-{i:012d}",
        "tenant": "acme",
        "team": "payments",
        "repo": "acme/billing",
        "user_hash": "9f2c4b7e1d3a5f60718293a4b5c6d7e8",
        "client_name": "vscode-continue",
        "client_version": "0.9.1",
        "source": "continue",
        "language": "python",
        "file_path": "billing/invoice.py",
        "prefix": "def total(items):\n    total = 0\n" + _CONTEXT,
        "suffix": "\n    return total\n",
        "completion": "    total += item.tax(<EMAIL_1>)\n",
        "choice_index": 0,
        "model_version": "gristmill-base@3",
        "backend": "embedded",
        "latency_ms": 41.5,
        "created_at": _T0 + timedelta(milliseconds=i),
        "policy_version": "sha256:4be1c0de",
        "redaction_counts": {"EMAIL": 1},
        "prompt_template": "fim-starcoder",
    }


def make_batches(size: int, count: int, start: int) -> list[list[dict[str, Any]]]:
    return [[record(start + b * size + k) for k in range(size)] for b in range(count)]


def timed(batches: Iterator[list[dict[str, Any]]], append: Any, seconds: float) -> float:
    """Append batches until the time budget is spent; return appends per second."""
    begin = time.perf_counter()
    done = 0
    for batch in batches:
        append(batch)
        done += 1
        if time.perf_counter() - begin >= seconds:
            break
    return done / (time.perf_counter() - begin)


def raw_writer(path: Path, sync: bool) -> tuple[Any, Any]:
    """A plain append-only file: returns (append(batch), close())."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(batch: list[dict[str, Any]]) -> None:
        os.write(fd, orjson.dumps(batch, option=orjson.OPT_PASSTHROUGH_DATETIME, default=str))
        if sync:
            os.fdatasync(fd)

    return append, lambda: os.close(fd)


def measure_size(work: Path, size: int, rounds: int, seconds: float) -> dict[str, float]:
    """Median appends/s of each variant; variants alternate so they share the disk's mood."""
    count = max(200, 40_000 // size)  # more than a round can use
    batches = iter(make_batches(size, count * rounds * 3, start=size * 10_000_000))
    store = FeedbackStore(work / "log", work / "parquet", land_interval_s=3600)
    store.start()
    variants = {
        "unsynced": raw_writer(work / "plain.bin", sync=False),
        "fsync": raw_writer(work / "synced.bin", sync=True),
        "store": (store.append, store.close),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            for name, (append, _close) in variants.items():
                rates[name].append(timed(batches, append, seconds))
    finally:
        for _append, close in variants.values():
            close()
    return {name: statistics.median(values) for name, values in rates.items()}


def concurrent_rate(work: Path, threads: int, size: int, seconds: float) -> tuple[float, float]:
    store = FeedbackStore(work / "log", work / "parquet", land_interval_s=3600)
    store.start()
    per_thread = [iter(make_batches(size, 3000, 10_000_000 * (t + 1))) for t in range(threads)]
    rates = [0.0] * threads
    barrier = threading.Barrier(threads)

    def worker(t: int) -> None:
        barrier.wait()
        rates[t] = timed(per_thread[t], store.append, seconds)

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    stats = store.stats
    store.close()
    return sum(rates), stats["batches_appended"] / max(stats["commit_fsyncs"], 1)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.4, help="time budget per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temporary directory)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="store-append-", dir=args.dir))
    try:
        size = len(orjson.dumps(record(0), option=orjson.OPT_PASSTHROUGH_DATETIME, default=str))
        print(
            f"record ~{size / 1024:.1f} KB; medians of {args.rounds} alternating rounds of "
            f"{args.seconds:.1f} s; in {work}"
        )
        print(
            f"{'batch':>5} {'store appends/s':>16} {'records/s':>10} {'unsynced write/s':>17}"
            f" {'write+fsync/s':>14} {'store/unsynced':>15} {'store/fsync floor':>18}"
        )
        for batch_size in BATCH_SIZES:
            case = work / f"batch{batch_size}"
            case.mkdir()
            rate = measure_size(case, batch_size, args.rounds, args.seconds)
            store, unsynced, synced = rate["store"], rate["unsynced"], rate["fsync"]
            print(
                f"{batch_size:>5} {store:>16.0f} {store * batch_size:>10.0f} {unsynced:>17.0f}"
                f" {synced:>14.0f} {store / unsynced:>15.3f} {store / synced:>18.2f}"
            )
        total, per_fsync = concurrent_rate(work / "threads", 8, 16, args.seconds * args.rounds)
        print(
            f"8 threads x 16-record batches: {total:.0f} appends/s ({total * 16:.0f} records/s), "
            f"{per_fsync:.1f} appends per fsync (group commit)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
