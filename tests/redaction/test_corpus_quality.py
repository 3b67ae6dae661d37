"""Regression floor on the labeled corpus (tests/data/redaction_corpus.py): a few hundred
generated IDE payloads through the default Redactor. No gold secret may survive; recall and
precision stay above the floors bench/redaction.py reports against.

The seed here is neither of the bench's tuning seeds nor its held-out seed."""

from __future__ import annotations

import pytest

from redaction.recognizers import crc32_checksum_ok
from tests.data.redaction_corpus import (
    ALL_SECRET_KINDS,
    LANGUAGES,
    NEGATIVE,
    PII,
    SECRET,
    Sample,
    generate,
    gristmill_findings,
    score,
)

SEED = 101
SIZE = 300


@pytest.fixture(scope="module")
def corpus() -> list[Sample]:
    return generate(SEED, SIZE)


@pytest.fixture(scope="module")
def scores(redactor, corpus):
    return score(corpus, {s.id: gristmill_findings(redactor, s) for s in corpus})


def test_when_same_seed_then_same_corpus():
    assert generate(SEED, 20) == generate(SEED, 20)
    assert generate(SEED, 20) != generate(SEED + 1, 20)


def test_when_corpus_generated_then_spans_are_in_bounds_and_disjoint(corpus):
    for sample in corpus:
        spans = sorted(sample.spans, key=lambda s: s.start)
        for span in spans:
            assert 0 <= span.start < span.end <= len(sample.text)
            assert span.category in (SECRET, PII, NEGATIVE)
        for left, right in zip(spans, spans[1:], strict=False):
            assert left.end <= right.start, sample.id


def test_when_corpus_generated_then_every_language_and_kind_occurs(corpus):
    assert {s.language for s in corpus} == set(LANGUAGES)
    kinds = {span.kind for s in corpus for span in s.gold}
    expected = set(ALL_SECRET_KINDS) - {"twilio_auth_token"}
    assert expected <= kinds
    assert {"email", "phone", "person", "ip_address", "path_username"} <= kinds


def test_when_generated_github_and_npm_tokens_then_checksums_hold(corpus):
    tokens = [
        sample.text[span.start : span.end]
        for sample in corpus
        for span in sample.gold
        if span.kind in ("github_token", "npm_token")
        and sample.text.startswith(("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "npm_"), span.start)
    ]
    assert tokens and all(crc32_checksum_ok(t) for t in tokens)


def test_when_corpus_redacted_then_no_secret_leaks(scores):
    assert scores.leaks == []


def test_when_corpus_redacted_then_raw_secret_values_are_gone(redactor, corpus):
    """The stored text, not only the findings: no gold secret value survives `redact`."""
    for sample in corpus:
        out = redactor.redact({"prefix": sample.text}, file_path=sample.file_path)
        if out is None:
            continue  # dropped by a path rule: nothing stored
        for span in sample.gold:
            if span.category == SECRET:
                assert sample.text[span.start : span.end] not in out.fields["prefix"], sample.id


def test_when_corpus_redacted_then_recall_and_precision_above_floors(scores):
    assert scores.recall(SECRET) >= 0.99
    assert scores.recall(PII) >= 0.95
    assert scores.precision(SECRET) >= 0.95
    assert scores.precision(PII) >= 0.90


def test_when_hard_negatives_then_no_secret_finding_on_them(redactor, corpus):
    """Hashes, UUIDs, digests, public keys, placeholders and secret-named identifiers are
    never flagged as secrets (name-like product words may still trip the NER model)."""
    for sample in corpus:
        found = gristmill_findings(redactor, sample)
        for span in sample.negatives:
            hits = [
                f
                for f in found
                if f.category == SECRET and f.start < span.end and span.start < f.end
            ]
            assert not hits, (sample.id, span.kind, sample.text[span.start : span.end])
