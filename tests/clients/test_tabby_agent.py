"""tabby-agent@1.5.0 from npm, the engine of Tabby's IDE plugins, against the live gateway.

What 1.5.0 does, read from its published dist/cli.js and from TabbyML/tabby
(clients/tabby-agent/src/TabbyAgent.ts, LspServer.ts, JsonLineServer.ts; clients/vim/autoload):
- Configuration comes from ~/.tabby-client/agent/config.toml (`[server] endpoint`, `token`);
  every request carries `Authorization: Bearer <token>`.
- At start it GETs {endpoint}/v1/health (POST if the server answers 405). With a HealthState
  whose `version.git_describe` is at least 0.9.0 it then GETs /v1beta/server_setting; on
  `disable_client_side_telemetry` it turns off its usage reports to app.tabbyml.com and keeps
  that per endpoint in ~/.tabby-client/agent/data.json.
- Completions: POST /v1/completions {language, segments: {prefix, suffix, filepath, git_url,
  declarations, relevant_snippets_from_changed_files, clipboard}, user}.
- Events: POST /v1/events[?select_kind=line] {type: view|select|dismiss, completion_id,
  choice_index, view_id?, elapsed?, select_kind?}.
- Two front ends: by default a JSON-line protocol exposing the Agent interface (initialize,
  provideCompletions, postEvent), which the Vim and IntelliJ plugins drive; with `--lsp` a
  language server answering `textDocument/completion` (1.5.0 has no inline completion and no
  event methods over LSP, so view/select are reported through the line protocol only).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.clients.conftest import TabbyAgentHome, stored_rows
from tests.clients.lsp import JsonLineClient, LspClient
from tests.conftest import LiveGateway
from tests.support.fake_upstream import COMPLETION_TEXT

pytestmark = pytest.mark.slow  # real node subprocesses

PREFIX = "def add(a, b):\n    "
TEXT = PREFIX + "\n\nprint(add(1, 2))\n"
REMOTE = "https://git.example.com/acme/calc.git"

# What the Vim plugin sends at start (clients/vim/autoload/tabby/agent.vim).
CLIENT_PROPERTIES = {
    "user": {"vim": {"triggerMode": "auto"}},
    "session": {
        "client": "VIM - Vi IMproved 9.1",
        "ide": {"name": "VIM", "version": "VIM - Vi IMproved 9.1"},
        "tabby_plugin": {"name": "TabbyML/vim-tabby", "version": "1.5.0"},
    },
}


def _completion_request(workspace: Path) -> dict:
    """A CompletionRequest as the IntelliJ/VS Code plugins fill it (workspace and git known)."""
    return {
        "filepath": str(workspace / "src" / "calc.py"),
        "language": "python",
        "text": TEXT,
        "position": len(PREFIX),
        "clipboard": "",
        "manually": True,
        "workspace": str(workspace),
        "git": {"root": str(workspace), "remotes": [{"name": "origin", "url": REMOTE}]},
    }


def _start(agent: JsonLineClient, home: TabbyAgentHome) -> None:
    assert agent.call("initialize", {"clientProperties": CLIENT_PROPERTIES}) is True
    status = agent.call("getStatus")
    assert status == "ready", f"agent status {status}; events {agent.events}\n{home.log_tail()}"


@pytest.mark.parametrize(
    "select_kind,accept_kind",
    [
        (None, "full"),  # Tab: the whole suggestion
        ("line", "line"),  # accept the next line only (sent as ?select_kind=line)
    ],
)
def test_when_plugin_shows_and_accepts_completion_then_gateway_stores_suggestion_and_events(
    tabby_jsonl: JsonLineClient,
    tabby_home: TabbyAgentHome,
    live_gateway: LiveGateway,
    tmp_path: Path,
    select_kind: str | None,
    accept_kind: str,
) -> None:
    _start(tabby_jsonl, tabby_home)

    response = tabby_jsonl.call(
        "provideCompletions", _completion_request(tmp_path / "repo"), {"signal": True}
    )
    assert response is not None, tabby_home.log_tail()
    assert response["id"].startswith("cmpl-")
    choice = response["choices"][0]
    assert choice["text"] == COMPLETION_TEXT.rstrip("\n")  # the agent trims the trailing newline

    # The plugin reports "view" once the ghost text is on screen, "select" on accept.
    event = {"completion_id": response["id"], "choice_index": choice["index"]}
    assert tabby_jsonl.call("postEvent", {**event, "type": "view"}) is True
    select = {**event, "type": "select"}
    if select_kind:
        select["select_kind"] = select_kind
    assert tabby_jsonl.call("postEvent", select) is True

    sid = f"{response['id']}-{choice['index']}"
    suggestions = stored_rows(
        live_gateway,
        "SELECT source, language, file_path, repo, prefix, completion FROM suggestions "
        f"WHERE suggestion_id = '{sid}'",
        count=1,
    )
    assert suggestions == [("tabby", "python", "src/calc.py", REMOTE, PREFIX, COMPLETION_TEXT)]
    events = stored_rows(
        live_gateway,
        f"SELECT type, accept_kind, source FROM events WHERE suggestion_id = '{sid}' ORDER BY type",
        count=2,
    )
    assert events == [("accepted", accept_kind, "tabby"), ("shown", None, "tabby")]


def test_when_language_server_asked_for_completion_then_item_comes_from_gateway_and_is_recorded(
    tabby_lsp: LspClient, tabby_home: TabbyAgentHome, live_gateway: LiveGateway, tmp_path: Path
) -> None:
    init = tabby_lsp.request(
        "initialize",
        {
            "processId": None,
            "clientInfo": {"name": "gristmill-tests", "version": "1"},
            "rootUri": None,
            "capabilities": {},
        },
    )
    assert init["serverInfo"] == {"name": "tabby-agent", "version": "1.5.0"}
    assert "completionProvider" in init["capabilities"]
    tabby_lsp.notify("initialized", {})
    uri = (tmp_path / "calc.py").as_uri()
    tabby_lsp.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": TEXT}},
    )

    result = tabby_lsp.request(
        "textDocument/completion",
        {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 4}},
    )

    assert result["items"], f"no completion items\n{tabby_home.log_tail()}"
    item = result["items"][0]
    assert item["textEdit"]["newText"] == COMPLETION_TEXT.rstrip("\n")
    assert item["labelDetails"]["description"] == "Tabby"
    sid = f"{item['data']['completionId']}-{item['data']['choiceIndex']}"
    rows = stored_rows(
        live_gateway,
        f"SELECT source, language, prefix FROM suggestions WHERE suggestion_id = '{sid}'",
        count=1,
    )
    assert rows == [("tabby", "python", PREFIX)]
    # a disconnected or unauthorized agent says so with window/showMessage
    assert [n for n in tabby_lsp.notifications if n["method"] == "window/showMessage"] == []
    assert tabby_lsp.shutdown() == 0


def test_when_agent_runs_then_it_adopts_server_telemetry_off_and_connects_only_to_gateway(
    tabby_jsonl: JsonLineClient,
    tabby_home: TabbyAgentHome,
    live_gateway: LiveGateway,
    tmp_path: Path,
) -> None:
    _start(tabby_jsonl, tabby_home)
    health = tabby_jsonl.call("getServerHealthState")
    assert health["model"] == live_gateway.settings.model_name
    response = tabby_jsonl.call(
        "provideCompletions", _completion_request(tmp_path / "repo"), {"signal": True}
    )
    view = {"type": "view", "completion_id": response["id"], "choice_index": 0}
    assert tabby_jsonl.call("postEvent", view) is True

    # The agent fetches server settings in the background after its health check; the data
    # store holds what it adopted for this endpoint.
    deadline = time.monotonic() + 30
    adopted = None
    while adopted is None and time.monotonic() < deadline:
        adopted = tabby_home.data().get("serverConfig", {}).get(tabby_home.endpoint)
        time.sleep(0.05)
    assert adopted == {"anonymousUsageTracking": {"disable": True}}, tabby_home.log_tail()
    # Stopping runs the agent's finalize, which is when it would submit usage stats.
    assert tabby_jsonl.stop() == 0

    connections = tabby_home.connections()
    assert connections, "the connection log is empty: the preload hook did not run"
    gateway = {"host": "127.0.0.1", "port": live_gateway.settings.port, "path": None}
    assert [c for c in connections if c != gateway] == []
