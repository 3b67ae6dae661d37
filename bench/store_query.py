"""Query time over a day of small landed Parquet files, before vs after compaction, same run.

One command: `python bench/store_query.py`. It lands `--files` batches (default 2,000: a few
hours of 5-second landings for one tenant; a full day is ~17,000) through the store's own
ParquetLander, so each batch leaves one small suggestions file and one small events file in
the same day partition. It then times a few typical catalog queries (median of `--repeat`
runs each, through FeedbackStore.catalog(), file listing and view creation included), runs
FeedbackStore.compact(), times the same queries again and prints the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feedback_store import Catalog, FeedbackStore, ParquetLander  # noqa: E402

_T0 = datetime(2025, 1, 6, 0, 0, tzinfo=UTC)
_CONTEXT = "".join(f"    total += item.price * {j}  # line {j} of the file\n" for j in range(12))
MODELS = ("gristmill-base@3", "gristmill-lora@4")

QUERIES = {
    "count events": "SELECT count(*) FROM events",
    "acceptance by model": None,  # Catalog.acceptance(tenant, "model_version")
    "feedback outcomes": "SELECT outcome, count(*) FROM feedback GROUP BY ALL ORDER BY ALL",
    "one suggestion": "SELECT completion FROM suggestions WHERE suggestion_id = 'cmpl-1000-2'",
}


def batch(n: int, per_batch: int, span: timedelta) -> list[dict[str, Any]]:
    """One landing's records: per_batch suggestions, each shown and half of them accepted."""
    at = _T0 + span * (n - 1)
    records: list[dict[str, Any]] = []
    for k in range(per_batch):
        sid = f"cmpl-{n}-{k}"
        created = at + timedelta(milliseconds=k)
        records.append(
            {
                "record_type": "suggestion",
                "suggestion_id": sid,
                "request_id": f"req-{n}-{k}",
                "tenant": "acme",
                "team": "payments",
                "repo": "acme/billing",
                "user_hash": f"u{k % 7}",
                "client_name": "vscode-continue",
                "client_version": "0.9.1",
                "source": "continue",
                "language": "python",
                "file_path": "billing/invoice.py",
                "prefix": "def total(items):\n    total = 0\n" + _CONTEXT,
                "suffix": "\n    return total\n",
                "completion": "    total += item.tax(<EMAIL_1>)\n",
                "choice_index": 0,
                "model_version": MODELS[(n + k) % 2],
                "backend": "embedded",
                "latency_ms": 41.5,
                "created_at": created,
                "policy_version": "sha256:4be1c0de",
                "redaction_counts": {"EMAIL": 1},
                "prompt_template": "fim-starcoder",
            }
        )
        kinds = ["shown", "accepted"] if k % 2 == 0 else ["shown"]
        for j, kind in enumerate(kinds):
            ts = created + timedelta(seconds=1 + j)
            records.append(
                {
                    "record_type": "event",
                    "event_id": f"{sid}-{kind}",
                    "suggestion_id": sid,
                    "tenant": "acme",
                    "user_hash": f"u{k % 7}",
                    "type": kind,
                    "ts": ts,
                    "accepted_text": None,
                    "final_text": None,
                    "accept_kind": "full" if kind == "accepted" else None,
                    "elapsed_ms": 800.0,
                    "window_s": None,
                    "client_name": "vscode-continue",
                    "source": "continue",
                    "policy_version": "sha256:4be1c0de",
                    "redaction_counts": {},
                    "received_at": ts,
                }
            )
    return records


def run_query(catalog: Catalog, name: str) -> Any:
    sql = QUERIES[name]
    if sql is None:
        return catalog.acceptance("acme", "model_version")
    return catalog.query(sql, max_rows=None, timeout_s=None).rows


def time_queries(catalog: Catalog, repeat: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per query, and each query's result (to check compaction changed none)."""
    medians: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name in QUERIES:
        results[name] = run_query(catalog, name)  # warm-up (page cache, first open)
        seconds = []
        for _ in range(repeat):
            begin = time.perf_counter()
            run_query(catalog, name)
            seconds.append(time.perf_counter() - begin)
        medians[name] = statistics.median(seconds)
    return medians, results


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="landings (small files per type)")
    parser.add_argument("--per-batch", type=int, default=5, help="suggestions per landing")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per query (median)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temporary directory)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="store-query-", dir=args.dir))
    try:
        lander = ParquetLander(work / "parquet")
        span = timedelta(days=1) / args.files  # every landing on the same day
        begin = time.perf_counter()
        for n in range(1, args.files + 1):
            lander.land(f"{n:020d}", batch(n, args.per_batch, span))
        landing_s = time.perf_counter() - begin
        files = len(list((work / "parquet").rglob("part-*.parquet")))
        print(
            f"landed {args.files} batches x {args.per_batch} suggestions (+events) in "
            f"{landing_s:.1f} s: {files} small files; in {work}"
        )

        store = FeedbackStore(work / "log", work / "parquet", compact_interval_s=0)
        store.start()
        try:
            before, before_results = time_queries(store.catalog(), args.repeat)
            begin = time.perf_counter()
            result = store.compact()
            compact_s = time.perf_counter() - begin
            after, after_results = time_queries(store.catalog(), args.repeat)
        finally:
            store.close()
        if after_results != before_results:
            raise SystemExit("compaction changed a query result")
        print(
            f"compact(): {result.files_merged} files -> {result.files_written} in "
            f"{compact_s:.1f} s ({result.bytes_merged / 1e3:.0f} kB -> "
            f"{result.bytes_written / 1e3:.0f} kB); results identical"
        )
        print(f"{'query':<22} {'before ms':>10} {'after ms':>9} {'speed-up':>9}")
        for name in QUERIES:
            print(
                f"{name:<22} {before[name] * 1e3:>10.1f} {after[name] * 1e3:>9.1f}"
                f" {before[name] / after[name]:>8.1f}x"
            )
        total_before, total_after = sum(before.values()), sum(after.values())
        print(
            f"{'all':<22} {total_before * 1e3:>10.1f} {total_after * 1e3:>9.1f}"
            f" {total_before / total_after:>8.1f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
