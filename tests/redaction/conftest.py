"""Fixtures for the redaction tests. The spaCy-backed Redactor is built once per session."""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

import pytest
import yaml

from redaction import RedactionPolicy, Redactor, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "policies" / "redaction.yaml"
KEY = bytes(range(32))


@pytest.fixture(scope="session")
def default_policy() -> RedactionPolicy:
    return load_policy(DEFAULT_POLICY)


@pytest.fixture(scope="session")
def redactor(default_policy: RedactionPolicy) -> Redactor:
    """The default policy with the spaCy NER engine (loading it costs about a second)."""
    return Redactor(default_policy, key=KEY)


def policy_text(**changes: object) -> str:
    """The default policy's YAML with top-level keys replaced."""
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


def make_policy(**changes: object) -> RedactionPolicy:
    return parse_policy(policy_text(**changes), source="<test>")


def pattern_only_policy(**changes: object) -> RedactionPolicy:
    """The default policy without NER entities: builds without spaCy, in milliseconds."""
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    for name in ("PERSON", "LOCATION", "NRP"):
        data["entities"].pop(name, None)
    data.update(changes)
    return parse_policy(yaml.safe_dump(data, sort_keys=False), source="<test>")


class Fakes:
    """Secret-shaped values generated at run time, so no credential-like literal sits in
    the repository for scanners to flag. Deterministic per seed."""

    def __init__(self, seed: int = 7) -> None:
        self._rng = random.Random(seed)

    def chars(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        classes = [
            str.isdigit,
            str.isupper,
            str.islower,
        ]  # every class the alphabet offers must show up, as in real random keys
        wanted = [c for c in classes if any(c(ch) for ch in alphabet)]
        while True:
            value = "".join(self._rng.choice(alphabet) for _ in range(n))
            if n < len(wanted) or all(any(c(ch) for ch in value) for c in wanted):
                return value

    def aws_access_key(self) -> str:
        return "AKIA" + self.chars(16, string.ascii_uppercase + "234567")

    def aws_secret_key(self) -> str:
        return self.chars(40, string.ascii_letters + string.digits + "/+")

    def jwt(self) -> str:
        def part(obj: dict[str, object]) -> str:
            raw = json.dumps(obj, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).decode().rstrip("=")

        return ".".join(
            [
                part({"alg": "HS256", "typ": "JWT"}),
                part({"sub": "u-81", "iat": 1700000000}),
                self.chars(43, string.ascii_letters + string.digits + "-_"),
            ]
        )

    def pem_body(self, lines: int = 4) -> str:
        return "\n".join(
            self.chars(64, string.ascii_letters + string.digits + "+/") for _ in range(lines)
        )


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()
