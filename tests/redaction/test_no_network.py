"""Security invariant 7 for this package: building and running the engine opens no
connection. socket.socket.connect / connect_ex, socket.create_connection and
socket.getaddrinfo are monkeypatched to record the attempt and raise, so any library that
reaches out (tldextract fetching the public suffix list, spaCy downloading a model) is
caught even when it would swallow the error and fall back quietly."""

from __future__ import annotations

import socket

import pytest
import tldextract

from redaction import EngineError, RedactionPool, Redactor
from redaction.engine import DEFAULT_SPACY_MODEL, NerSpacyNlpEngine
from tests.redaction.conftest import KEY


@pytest.fixture
def attempts(monkeypatch) -> list[str]:
    seen: list[str] = []

    def refuse(name: str):
        def blocked(*args, **kwargs):
            seen.append(name)
            raise OSError(f"network disabled in this test ({name})")

        return blocked

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    return seen


def test_when_trap_set_then_a_library_that_reaches_out_is_caught(attempts):
    """Control: tldextract with its default settings does try the network."""
    tldextract.TLDExtract(cache_dir=None)("www.example.co.uk")
    assert attempts


def test_when_engine_built_and_run_then_no_connection_attempted(attempts, default_policy):
    engine = NerSpacyNlpEngine(DEFAULT_SPACY_MODEL)
    engine.load()  # a fresh load, not the process's shared one
    redactor = Redactor(default_policy, key=KEY)
    text = (
        "# ping ops@example.co.uk or admin@corp.internal, docs https://docs.python.org/3/\n"
        'DB = "mysql://svc:Pa55w0rdX@10.0.0.12:3306/app"  # from Hannah Schmidt\n'
    )
    out = redactor.redact({"prefix": text}, file_path="svc.py")
    assert attempts == []
    assert out is not None
    assert out.counts == {
        "EMAIL_ADDRESS": 2,
        "URL_CREDENTIALS": 1,
        "IP_ADDRESS": 1,
        "PERSON": 1,
    }
    assert list(engine.process_batch(["Hannah Schmidt wrote this"], "en"))
    assert attempts == []


def test_when_spacy_model_missing_then_refused_without_download(attempts, default_policy):
    """Presidio's own SpacyNlpEngine would call spacy.cli.download here."""
    with pytest.raises(EngineError, match="not installed"):
        Redactor(default_policy, key=KEY, spacy_model="en_core_web_missing_model")
    with pytest.raises(EngineError, match="not installed"):
        RedactionPool(
            default_policy, key=KEY, workers=1, timeout_s=5, spacy_model="en_core_web_missing_model"
        )
    assert attempts == []
