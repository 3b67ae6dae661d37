"""Security invariant 7: a full run opens no connection except to what settings name.

The run happens in a child interpreter with an audit hook that records every
socket.connect and getaddrinfo, so the hook cannot leak into other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    seen = []
    def hook(event, args):
        if event == "socket.connect":
            seen.append(["connect", str(args[1])])
        elif event == "socket.getaddrinfo":
            seen.append(["getaddrinfo", str(args[0])])
    sys.addaudithook(hook)

    from pathlib import Path
    from fastapi.testclient import TestClient
    from gateway.app import create_asgi
    from tests.conftest import create_tokens, make_settings
    from tests.support.fake_upstream import FakeUpstream

    up = FakeUpstream().start()
    settings = make_settings(Path(sys.argv[1]), backend="openai_upstream", upstream_url=up.url)
    tokens = create_tokens(settings)
    auth = {"Authorization": "Bearer " + tokens["dev"]}
    with TestClient(create_asgi(settings)) as client:
        r = client.post("/v1/completions", json={
            "prompt": "# see https://intranet.example.com/wiki and mail bob@example.com\\nx = ",
        }, headers=auth)
        assert r.status_code == 200, r.text
        sid = r.json()["choices"][0]["suggestion_id"]
        r = client.post("/v1/telemetry/events", json={"events": [
            {"event_id": "e1", "suggestion_id": sid, "type": "edited",
             "final_text": "url = 'https://user:pw@db.example.org/x'"}]}, headers=auth)
        assert r.status_code == 202, r.text
        client.app.state.runtime.store.flush()
        ml = {"Authorization": "Bearer " + tokens["ml"]}
        assert client.get("/v1/analytics/acceptance", headers=ml).status_code == 200
    up.stop()
    print("AUDIT" + json.dumps(seen))
    """
)


def test_when_full_run_then_only_loopback_connections(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("AUDIT"))
    seen = json.loads(line[len("AUDIT") :])
    assert any(kind == "connect" for kind, _ in seen), (
        "the run made no connection at all: hook broken"
    )
    outside = [
        (kind, target)
        for kind, target in seen
        if not any(host in target for host in ("127.0.0.1", "localhost", "::1"))
    ]
    assert outside == []
