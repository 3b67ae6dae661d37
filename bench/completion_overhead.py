"""Completion overhead: /v1/completions through the gateway vs the same upstream directly.

One command: `python bench/completion_overhead.py` (or `make bench-overhead`).
Layout on 2 cores: the gateway alone on core 0; the fast upstream, the load generator and
the gateway's redaction worker process(es) on core 1 (redaction is off the serving path by
design; in production it has cores of its own). Runs alternate direct/gateway so both see
the same machine state, and each direct run waits until the gateway has recorded everything
it served (so the direct runs are not slowed by the redaction backlog); medians over runs.
Reports added p50/p99 at 32 concurrent clients, and the gateway's CPU time per request,
from which req/s on one core follows. Recording is on: every served choice is queued for
redaction and the durable log, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bench._common import (  # noqa: E402
    PYTHON,
    children,
    cpu_seconds,
    free_port,
    median,
    percentile,
    pin_children,
    start,
    wait_http,
    wait_recorded,
)

PREFIX = (
    "import logging\nfrom dataclasses import dataclass\n\nlog = logging.getLogger(__name__)\n\n\n"
    "@dataclass\nclass Invoice:\n    customer_id: int\n    amount_cents: int\n"
    "    currency: str = 'EUR'\n\n"
    "    def total_with_tax(self, rate: float) -> int:\n"
    '        """Amount including tax, rounded."""\n'
)


def body_for(i: int) -> bytes:
    # ~1.7 KB like the serving notes' body; varied so caches do not flatter the result.
    filler = "".join(f"    # line {j} of context for request {i % 200}\n" for j in range(30))
    return json.dumps(
        {
            "model": "gristmill-base",
            "prompt": PREFIX + filler,
            "suffix": "\n\ndef main():\n    pass\n",
            "max_tokens": 16,
            "temperature": 0,
        }
    ).encode()


async def load(
    url: str, headers: dict[str, str], total: int, clients: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    counter = iter(range(total))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            for i in counter:
                body = body_for(i)
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url} answered {resp.status}")
                latencies.append((time.perf_counter() - t0) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per run")
    parser.add_argument("--runs", type=int, default=5, help="interleaved runs per target")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--redaction-workers", type=int, default=1)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra gateway setting, e.g. --set GRISTMILL_INGEST_QUEUE_SIZE=1",
    )
    args = parser.parse_args()

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    work = Path(tempfile.mkdtemp(prefix="gm-bench-"))
    up_port, gw_port = free_port(), free_port()
    upstream = start(
        [PYTHON, "-m", "tests.support.fake_upstream", "--port", str(up_port)], cores=(1,)
    )
    env = {
        "GRISTMILL_DATA_DIR": str(work / "data"),
        "GRISTMILL_BACKEND": "openai_upstream",
        "GRISTMILL_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
        "GRISTMILL_REDACTION_WORKERS": str(args.redaction_workers),
        "GRISTMILL_PORT": str(gw_port),
        **dict(kv.split("=", 1) for kv in args.set),
    }
    token_out = (
        os.popen(
            f"GRISTMILL_DATA_DIR={work / 'data'} {PYTHON} -m gateway.cli tokens create "
            "--tenant bench --user loadgen --role developer"
        )
        .read()
        .strip()
    )
    gateway = start(
        [PYTHON, "-m", "gateway.cli", "serve", "--no-access-log"],
        env=env,
        cores=(0,),
        log=work / "gateway.log",
    )
    os.sched_setaffinity(0, {1} & os.sched_getaffinity(0) or os.sched_getaffinity(0))
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", proc=upstream)
        wait_http(f"http://127.0.0.1:{gw_port}/readyz", proc=gateway)
        workers = pin_children(gateway.pid, (1,))
        base = f"http://127.0.0.1:{gw_port}"
        direct_url = f"http://127.0.0.1:{up_port}/v1/completions"
        gw_url = f"http://127.0.0.1:{gw_port}/v1/completions"
        gw_headers = {"Authorization": f"Bearer {token_out}", "Content-Type": "application/json"}
        plain = {"Content-Type": "application/json"}
        # warm-up
        asyncio.run(load(direct_url, plain, 300, args.clients))
        asyncio.run(load(gw_url, gw_headers, 300, args.clients))
        served = 300
        rows: dict[str, list[tuple[float, float, float]]] = {"direct": [], "gateway": []}
        cpu_per_req: list[float] = []
        drain_s: list[float] = []
        worker_cpu0 = sum(cpu_seconds(w) for w in children(gateway.pid))
        for r in range(args.runs):
            drain_s.append(wait_recorded(base, served))
            lat, el = asyncio.run(load(direct_url, plain, args.requests, args.clients))
            rows["direct"].append((percentile(lat, 50), percentile(lat, 99), args.requests / el))
            c0 = cpu_seconds(gateway.pid)
            lat, el = asyncio.run(load(gw_url, gw_headers, args.requests, args.clients))
            served += args.requests
            # CPU until the run's records are durable: recording is part of the cost
            drain_s.append(wait_recorded(base, served))
            c1 = cpu_seconds(gateway.pid)
            rows["gateway"].append((percentile(lat, 50), percentile(lat, 99), args.requests / el))
            cpu_per_req.append((c1 - c0) / args.requests * 1000)
            print(
                f"run {r + 1}: direct p50 {rows['direct'][-1][0]:.2f} ms | "
                f"gateway p50 {rows['gateway'][-1][0]:.2f} ms "
                f"p99 {rows['gateway'][-1][1]:.2f} ms | "
                f"gateway CPU {cpu_per_req[-1]:.3f} ms/req",
                flush=True,
            )
        d50 = median([x[0] for x in rows["direct"]])
        d99 = median([x[1] for x in rows["direct"]])
        g50 = median([x[0] for x in rows["gateway"]])
        g99 = median([x[1] for x in rows["gateway"]])
        cpu = median(cpu_per_req)
        drain_s.append(wait_recorded(base, served))
        worker_cpu = sum(cpu_seconds(w) for w in children(gateway.pid)) - worker_cpu0
        metrics = os.popen(f"curl -s http://127.0.0.1:{gw_port}/metrics").read()
        print()
        print(f"{'':22}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
        d_rps = median([x[2] for x in rows["direct"]])
        g_rps = median([x[2] for x in rows["gateway"]])
        print(f"{'upstream direct':22}{d50:>10.2f}{d99:>10.2f}{d_rps:>10.0f}")
        print(f"{'through gateway':22}{g50:>10.2f}{g99:>10.2f}{g_rps:>10.0f}")
        added = f"p50 +{g50 - d50:.2f} ms (target <= 2)   p99 +{g99 - d99:.2f} ms (target <= 10)"
        print(f"added by gateway      {added}")
        per_core = f"{1000 / cpu:.0f} req/s on one core (target >= 3000)"
        print(f"gateway CPU per request {cpu:.3f} ms -> {per_core}")
        print(f"ratios gateway/direct: p50 x{g50 / d50:.2f}, p99 x{g99 / d99:.2f}")
        if workers:
            per_rec = worker_cpu / (args.runs * args.requests) * 1000
            print(
                f"redaction workers (off the serving core): {per_rec:.3f} ms CPU per record; "
                f"backlog drained within {max(drain_s):.1f} s of each run"
            )
        overflow = [
            ln for ln in metrics.splitlines() if ln.startswith("gristmill_ingest_overflow_total")
        ]
        recorded = [ln for ln in metrics.splitlines() if ln.startswith("gristmill_records_total")]
        print(
            "recording:",
            "; ".join(recorded) or "none yet",
            "|",
            "; ".join(overflow) or "no overflow",
        )
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(30)
        upstream.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
