"""Real IDE client parts (the npm tabby-agent) started against the live gateway.

The agent is installed once per session with npm into a temporary prefix: the repository's
.gitignore covers node_modules/ but not the npm manifest files, so the prefix cannot live in the
checkout. npm's own cache makes later installs fast.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.clients.lsp import JsonLineClient, LspClient

if TYPE_CHECKING:
    from tests.conftest import LiveGateway

TABBY_AGENT_VERSION = "1.5.0"
CONNECT_LOG_JS = Path(__file__).with_name("connect_log.js")


def _tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH; the client tests need it to {purpose}")
    return path


@pytest.fixture(scope="session")
def tabby_agent_cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dist/cli.js` of tabby-agent@1.5.0, freshly installed from the npm registry."""
    npm = _tool("npm", f"install tabby-agent@{TABBY_AGENT_VERSION} (install Node.js 20 with npm)")
    prefix = tmp_path_factory.mktemp("tabby-agent-npm")
    proc = subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(prefix),
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            f"tabby-agent@{TABBY_AGENT_VERSION}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, (
        f"npm install failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    package = prefix / "node_modules" / "tabby-agent"
    manifest = json.loads((package / "package.json").read_text())
    assert manifest["version"] == TABBY_AGENT_VERSION
    return package / manifest["bin"]["tabby-agent"]


class TabbyAgentHome:
    """A HOME for one agent: its config.toml, data store, logs, and our connection log."""

    def __init__(self, root: Path, endpoint: str, token: str) -> None:
        self.root = root
        self.endpoint = endpoint
        self.agent_dir = root / ".tabby-client" / "agent"
        self.agent_dir.mkdir(parents=True)
        self.connect_log = root / "connections.jsonl"
        self.connect_log.touch()
        # The README's client config, plus debug logs for failure messages.
        (self.agent_dir / "config.toml").write_text(
            f'[server]\nendpoint = "{endpoint}"\ntoken = "{token}"\n\n'
            "[anonymousUsageTracking]\ndisable = true\n\n"
            '[logs]\nlevel = "debug"\n'
        )

    def connections(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.connect_log.read_text().splitlines()]

    def data(self) -> dict[str, Any]:
        """The agent's data store; {} while it does not exist or the agent is rewriting it
        (it truncates, then writes: a read in between sees an empty or partial file). Callers
        poll with a deadline."""
        path = self.agent_dir / "data.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def log_tail(self, chars: int = 4000) -> str:
        logs = sorted((self.agent_dir / "logs").glob("*.log"))
        return "".join(p.read_text() for p in logs)[-chars:] if logs else "(no agent log)"


def start_tabby_agent(cli: Path, home: TabbyAgentHome, *args: str) -> subprocess.Popen[bytes]:
    node = _tool("node", "run tabby-agent (install Node.js 20)")
    stderr = (home.root / "stderr.log").open("wb")
    try:
        return subprocess.Popen(
            [node, "--require", str(CONNECT_LOG_JS), str(cli), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=home.root,
            # Only what the agent needs: its own HOME, so nothing of the developer's leaks in.
            env={"HOME": str(home.root), "CONNECT_LOG_FILE": str(home.connect_log)},
        )
    finally:
        stderr.close()


@pytest.fixture
def tabby_home(tmp_path: Path, live_gateway: LiveGateway) -> TabbyAgentHome:
    return TabbyAgentHome(
        tmp_path / "home", f"{live_gateway.url}/tabby", live_gateway.tokens["dev"]
    )


@pytest.fixture
def tabby_jsonl(tabby_agent_cli: Path, tabby_home: TabbyAgentHome) -> Iterator[JsonLineClient]:
    """The agent as the Vim and IntelliJ plugins run it: `node cli.js`, line protocol."""
    client = JsonLineClient(start_tabby_agent(tabby_agent_cli, tabby_home))
    yield client
    client.stop()


@pytest.fixture
def tabby_lsp(tabby_agent_cli: Path, tabby_home: TabbyAgentHome) -> Iterator[LspClient]:
    """The agent as a generic language server: `node cli.js --lsp --stdio`."""
    client = LspClient(start_tabby_agent(tabby_agent_cli, tabby_home, "--lsp", "--stdio"))
    yield client
    client.stop()


def stored_rows(live: LiveGateway, sql: str, count: int, timeout_s: float = 30.0) -> list[tuple]:
    """Lands what the gateway has ingested until `sql` returns `count` rows, then returns them.

    Served suggestions are recorded after the response, so a client can be faster than the
    ingest queue; this waits for the data, not for a fixed time.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if live.runtime.ingestor.pending and time.monotonic() < deadline:
            time.sleep(0.02)
            continue
        live.runtime.store.flush()
        rows = live.runtime.store.catalog().query(sql).rows
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)
