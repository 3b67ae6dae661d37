"""Shared helpers for benchmarks: subprocess servers pinned to cores, latency stats."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cores: Sequence[int]):
    """preexec_fn that pins a child to the given cores (when the machine has them)."""
    available = sorted(os.sched_getaffinity(0))
    chosen = [c for c in cores if c in available] or available

    def apply() -> None:
        os.sched_setaffinity(0, chosen)

    return apply


def start(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    cores: Sequence[int] = (0,),
    log: Path | None = None,
) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=pinned(cores),
    )


def wait_http(url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (and its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


PYTHON = sys.executable


def children(pid: int) -> list[int]:
    """Direct child processes of `pid` (e.g. the gateway's redaction workers)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(x) for x in text)
    return out


def pin_children(pid: int, cores: Sequence[int]) -> list[int]:
    """Moves a server's helper processes (redaction workers) off the server's own core."""
    available = sorted(os.sched_getaffinity(0))
    chosen = [c for c in cores if c in available] or available
    kids = children(pid)
    for kid in kids:
        os.sched_setaffinity(kid, chosen)
    return kids


def metric_sum(metrics_text: str, name: str) -> float:
    """Sum of every sample of one Prometheus metric (all label sets)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_recorded(base_url: str, expected: int, timeout_s: float = 300.0) -> float:
    """Waits until the gateway has made `expected` records durable; returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
        done = metric_sum(text, "gristmill_records_total") + metric_sum(
            text, "gristmill_ingest_overflow_total"
        )
        if done >= expected:
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError(f"the gateway recorded fewer than {expected} records in {timeout_s}s")
