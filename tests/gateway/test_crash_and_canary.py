"""Durability and secrecy, with the gateway as a real subprocess.

- kill -9 after N acknowledged events, restart: all N land, each exactly once.
- Canary secrets sent in prefixes and completions never reach any byte on disk or in logs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from feedback_store import Catalog
from tests.conftest import create_tokens, free_port, make_settings

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# Fake, well-formed canaries (not real credentials).
AWS_KEY_ID = "AKIAQ4CANARY7EXAMPLZ"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYCANARYKEYZ"
EMAIL = "canary.person@example-corp.com"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0CANARYcanaryCANARYcanary0123456789abcdefghijklmnop\n"
    "qrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstu\n"
    "-----END RSA PRIVATE KEY-----\n"
)
CANARIES = [AWS_KEY_ID, AWS_SECRET, EMAIL, "MIIEowIBAAKCAQEA0CANARY", "canary.person"]


class Proc:
    def __init__(self, settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        env = {
            **os.environ,
            "GRISTMILL_DATA_DIR": str(settings.data_dir),
            "GRISTMILL_BACKEND": settings.backend,
            "GRISTMILL_UPSTREAM_URL": settings.upstream_url or "",
            "GRISTMILL_PORT": str(settings.port),
            "GRISTMILL_LAND_INTERVAL_S": "0.5",
        }
        with open(log, "ab") as out:
            self.p = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{settings.port}"
        deadline = time.monotonic() + 120
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(f"gateway exited {self.p.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not become ready")
            time.sleep(0.2)

    def kill9(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(60)


def test_when_killed_after_acks_then_restart_lands_each_acked_event_once(tmp_path, upstream):
    settings = make_settings(
        tmp_path / "data", backend="openai_upstream", upstream_url=upstream.url, port=free_port()
    )
    tokens = create_tokens(settings)
    auth = {"Authorization": f"Bearer {tokens['dev']}"}
    gw = Proc(settings, tmp_path / "gateway.log")
    acked: list[str] = []
    with httpx.Client(base_url=gw.url, headers=auth, timeout=30) as client:
        for batch in range(40):
            events = [
                {"event_id": f"b{batch}-e{i}", "suggestion_id": f"s{batch}", "type": "shown"}
                for i in range(5)
            ]
            r = client.post("/v1/telemetry/events", json={"events": events})
            assert r.status_code == 202
            acked += [e["event_id"] for e in events]
    # a retry of acknowledged events, then the crash
    with httpx.Client(base_url=gw.url, headers=auth, timeout=30) as client:
        client.post(
            "/v1/telemetry/events",
            json={"events": [{"event_id": "b0-e0", "suggestion_id": "s0", "type": "shown"}]},
        )
    gw.kill9()

    gw2 = Proc(settings, tmp_path / "gateway.log")
    gw2.stop()  # graceful stop flushes and lands everything
    rows = Catalog(settings.parquet_dir).query("SELECT event_id FROM events").rows
    landed = [r[0] for r in rows]
    assert len(landed) == len(set(landed)), "an event landed twice"
    assert set(acked) <= set(landed)
    assert len(acked) == 200


def test_when_secrets_sent_then_no_byte_on_disk_or_in_logs_has_them(tmp_path, upstream):
    settings = make_settings(
        tmp_path / "data", backend="openai_upstream", upstream_url=upstream.url, port=free_port()
    )
    tokens = create_tokens(settings)
    auth = {"Authorization": f"Bearer {tokens['dev']}"}
    log = tmp_path / "gateway.log"
    gw = Proc(settings, log)
    prefix = (
        f"# contact {EMAIL} for access\n"
        f'AWS_ACCESS_KEY_ID = "{AWS_KEY_ID}"\n'
        f'AWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"\n'
        f'KEY = """{PEM}"""\n'
        "def connect():\n    "
    )
    with httpx.Client(base_url=gw.url, headers=auth, timeout=30) as client:
        r = client.post("/v1/completions", json={"prompt": prefix, "suffix": f"# {EMAIL}\n"})
        assert r.status_code == 200
        sid = r.json()["choices"][0]["suggestion_id"]
        r = client.post(
            "/tabby/v1/completions",
            json={
                "language": "python",
                "segments": {"prefix": prefix, "filepath": "/home/canary.person/app.py"},
            },
        )
        assert r.status_code == 200
        events = [
            {
                "event_id": "c1",
                "suggestion_id": sid,
                "type": "accepted",
                "accept_kind": "line",
                "accepted_text": f"key = '{AWS_SECRET}'",
            },
            {
                "event_id": "c2",
                "suggestion_id": sid,
                "type": "edited",
                "final_text": f"{PEM}\n# mail {EMAIL}\nid = '{AWS_KEY_ID}'",
            },
        ]
        assert client.post("/v1/telemetry/events", json={"events": events}).status_code == 202
        bad = client.post("/v1/telemetry/events", json={"events": [{"event_id": AWS_SECRET}]})
        assert bad.status_code == 422
        client.post(
            "/continue/dev-data",
            json={
                "name": "autocomplete",
                "data": {
                    "completionId": "k1",
                    "completion": f"'{AWS_SECRET}'",
                    "prefix": prefix,
                    "accepted": True,
                },
            },
        )
    time.sleep(1.5)
    gw.stop()
    stored = Catalog(settings.parquet_dir).query("SELECT count(*) FROM suggestions").rows[0][0]
    assert stored >= 3  # the records exist, redacted
    texts = (
        Catalog(settings.parquet_dir)
        .query("SELECT prefix || coalesce(completion, '') FROM suggestions")
        .rows
    )
    assert any("<AWS" in t[0] or "<EMAIL" in t[0] for t in texts)
    offenders = []
    for path in [*settings.data_dir.rglob("*"), log]:
        if path.is_file():
            data = path.read_bytes()
            offenders += [f"{path}: {c}" for c in CANARIES if c.encode() in data]
    assert offenders == []
