"""The per-deployment key file and the keyed hash."""

from __future__ import annotations

import hashlib
import hmac
import stat

import pytest

from redaction import KeyFileError, keyed_hash, load_or_create_key


def test_when_key_missing_then_created_0600_with_parents(tmp_path):
    path = tmp_path / "state" / "keys" / "deployment.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key  # stable across restarts


def test_when_two_deployments_then_keys_differ(tmp_path):
    assert load_or_create_key(tmp_path / "a") != load_or_create_key(tmp_path / "b")


@pytest.mark.parametrize("content", ["not hex\n", "abcd\n"], ids=["not-hex", "too-short"])
def test_when_key_file_malformed_then_refused(tmp_path, content):
    path = tmp_path / "key"
    path.write_text(content)
    with pytest.raises(KeyFileError):
        load_or_create_key(path)


def test_when_hashed_then_hmac_sha256_hex():
    key = b"k" * 32
    expected = hmac.new(key, b"jdoe@corp", hashlib.sha256).hexdigest()
    assert keyed_hash(key, "jdoe@corp") == expected
    assert keyed_hash(b"x" * 32, "jdoe@corp") != expected
