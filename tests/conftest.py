"""Shared fixtures. Expensive real things (tiny model, fake upstream) start once per session."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_asgi
from gateway.auth import TokenStore
from gateway.settings import Settings
from redaction import load_or_create_key
from tests.support.fake_upstream import FakeUpstream

pytest_plugins = ["tests.fixtures_model"]


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "data_dir": data_dir,
        "land_interval_s": 0.2,
        "redaction_workers": 0,
    }
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


class Gateway:
    """A running app (lifespan included) plus tokens for a few principals."""

    def __init__(self, client: TestClient, settings: Settings, tokens: dict[str, str]) -> None:
        self.client = client
        self.settings = settings
        self.tokens = tokens

    def auth(self, who: str = "dev") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    @property
    def runtime(self):
        return self.client.app.state.runtime  # type: ignore[attr-defined]

    def flush(self) -> None:
        """Waits until queued served records are durable, then lands everything as Parquet."""
        # a stream records its suggestion just after its last chunk: give it that turn
        time.sleep(0.05)
        deadline = time.monotonic() + 30
        while self.runtime.ingestor.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.runtime.ingestor.in_flight, "served records still not durable after 30 s"
        self.runtime.store.flush()

    def query(self, sql: str) -> list[tuple]:
        return self.runtime.store.catalog().query(sql).rows


def create_tokens(settings: Settings) -> dict[str, str]:
    assert settings.tokens_file and settings.key_file
    store = TokenStore(settings.tokens_file, user_key=load_or_create_key(settings.key_file))
    return {
        "dev": store.create(tenant="acme", user="alice", roles=["developer"]),
        "dev2": store.create(tenant="acme", user="bob", roles=["developer"]),
        "ml": store.create(tenant="acme", user="mona", roles=["ml_engineer"]),
        "auditor": store.create(tenant="acme", user="audrey", roles=["auditor"]),
        "other": store.create(tenant="globex", user="eve", roles=["developer", "ml_engineer"]),
        "admin": store.create(
            tenant="acme",
            user="root",
            roles=["developer", "ml_engineer", "security_admin", "auditor"],
        ),
    }


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    opened: list[TestClient] = []

    def factory(**overrides: object) -> Gateway:
        settings = make_settings(tmp_path / f"data{len(opened)}", **overrides)
        tokens = create_tokens(settings)
        client = TestClient(create_asgi(settings), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return Gateway(client, settings, tokens)

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def gw(gateway_factory: Callable[..., Gateway], upstream: FakeUpstream) -> Gateway:
    """A gateway in front of the fast fake OpenAI-compatible upstream."""
    upstream.fail_status = 0
    return gateway_factory(backend="openai_upstream", upstream_url=upstream.url)


class LiveGateway:
    """A real uvicorn server in a thread, for clients that need a socket (SDKs, npm agents)."""

    def __init__(self, settings: Settings, tokens: dict[str, str]) -> None:
        import threading

        import uvicorn

        self.settings = settings
        self.tokens = tokens
        self.app = create_asgi(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=settings.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="live-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def runtime(self):
        return self.app.state.runtime

    def start(self) -> LiveGateway:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("live gateway did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_gateway(tmp_path: Path, upstream: FakeUpstream) -> Iterator[LiveGateway]:
    upstream.fail_status = 0
    settings = make_settings(
        tmp_path / "live", backend="openai_upstream", upstream_url=upstream.url, port=free_port()
    )
    live = LiveGateway(settings, create_tokens(settings)).start()
    yield live
    live.stop()
