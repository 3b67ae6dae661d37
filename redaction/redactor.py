"""The Redactor: one record's text fields in, redacted fields (or None: drop) out.

Order of work, cheapest first:
1. policy rules on the record (opt-out repo, path rules): drop before reading any text;
2. per field, pattern recognizers over the whole text (secrets, e-mail, phone, IP, paths);
3. NER only on comment / string / prose lines with a capitalised word, all fields of the
   record in one `nlp.pipe` batch;
4. overlaps resolved (secrets before personal data before NER), then Presidio's
   AnonymizerEngine applies each entity's action with placeholders shared by all fields.
Steps 2-4 are cached per field text and per NER line under a keyed hash.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import regex
from presidio_anonymizer.entities import (
    ConflictResolutionStrategy,
    OperatorConfig,
)
from presidio_anonymizer.entities import (
    RecognizerResult as AnonymizerResult,
)

from redaction.cache import KeyedCache
from redaction.engine import (
    DEFAULT_SPACY_MODEL,
    LANGUAGE,
    PlaceholderMap,
    build_analyzer,
    build_anonymizer,
    empty_artifacts,
    ner_entities,
)
from redaction.entities import CATALOGUE, EntityType, Kind, custom_entity
from redaction.keys import keyed_hash
from redaction.lexer import PROSE, FileKind, kind_for_path, ner_pieces, prose_spans
from redaction.policy import RedactionPolicy
from redaction.recognizers import Deadline

NER_BATCH = 64
PROPAGATE_MIN = 6


class Finding(NamedTuple):
    """A detected span; content-free so it can be cached."""

    start: int
    end: int
    entity: str
    score: float
    recognizer: str = ""


@dataclass
class RedactedFields:
    """The redacted text fields of one record and how many findings of each entity type."""

    fields: dict[str, str | None]
    counts: dict[str, int]
    # the version of the policy that produced these fields (a record must carry it)
    policy_version: str = ""


@dataclass(frozen=True)
class ExplainedFinding:
    """One finding as a dry run shows it: span in the original text and what happens to it."""

    field: str
    entity: str
    start: int
    end: int
    score: float
    recognizer: str
    action: str


@dataclass
class Explanation:
    """What a policy does to one record: every finding, the result, and why it is dropped.

    `dropped` is None when the record would be stored, else `opt_out_repo`, `path_rule` or
    `entity:<NAME>` (an entity whose action is drop_record); `fields` is then empty.
    """

    policy_version: str
    overrides: list[str]
    dropped: str | None
    fields: dict[str, str | None]
    findings: list[ExplainedFinding]


class Redactor:
    """Redacts records under one policy. Not thread-safe: use one per thread or process."""

    def __init__(
        self,
        policy: RedactionPolicy,
        *,
        key: bytes,
        spacy_model: str = DEFAULT_SPACY_MODEL,
        cache_size: int = 8192,
    ) -> None:
        self.policy = policy
        self.policy_version = policy.version
        doc = policy.document
        self._key = key
        self._spacy_model = spacy_model
        self._cache_size = cache_size
        # Overrides: the effective policy of a (tenant, repo) is built once, on first use.
        self._variants: dict[tuple[int, ...], Redactor] = {}
        self._matches: dict[tuple[str | None, str | None], tuple[int, ...]] = {}
        self._deadline = Deadline()
        self._analyzer, self._nlp_engine = build_analyzer(policy, self._deadline, spacy_model)
        self._anonymizer = build_anonymizer()
        self._empty = empty_artifacts()
        self._rules = doc.entities
        self._types: dict[str, EntityType] = {
            name: CATALOGUE.get(name) or custom_entity(name) for name in doc.entities
        }
        self._ner_entities = ner_entities(policy)
        pattern_entities = [e for e in doc.entities if e not in self._ner_entities]
        self._code_entities = [e for e in pattern_entities if not self._types[e].prose_only]
        self._prose_entities = [e for e in pattern_entities if self._types[e].prose_only]
        self._drop_entities = {
            e for e, rule in doc.entities.items() if rule.action == "drop_record"
        }
        self._allow_literals = frozenset(doc.allow.literals)
        self._allow_regexes = [regex.compile(r) for r in doc.allow.regexes]
        self._prose_fields = frozenset(doc.prose_fields)
        self._cache: KeyedCache[tuple[Finding, ...]] = KeyedCache(key, cache_size)

    def redact(
        self,
        fields: Mapping[str, str | None],
        *,
        file_path: str | None = None,
        repo: str | None = None,
        tenant: str | None = None,
        timeout_s: float | None = None,
    ) -> RedactedFields | None:
        """Redacted copies of `fields`; None when the policy says the record is not stored.

        `tenant` and `repo` select the policy's overrides that apply to this record.
        `timeout_s` bounds the work on this record: past it, RedactionTimeout is raised and
        nothing is returned.
        """
        target = self._variant(tenant, repo)
        if target is not self:
            return target.redact(fields, file_path=file_path, repo=repo, timeout_s=timeout_s)
        if self.policy.opted_out(repo) or self.policy.drops_path(file_path):
            return None
        findings = self._findings(fields, file_path, timeout_s)
        if any(f.entity in self._drop_entities for fs in findings.values() for f in fs):
            return None
        return self._apply(fields, findings)

    def explain(
        self,
        fields: Mapping[str, str | None],
        *,
        file_path: str | None = None,
        repo: str | None = None,
        tenant: str | None = None,
        timeout_s: float | None = None,
    ) -> Explanation:
        """A dry run of `redact`: the same result plus every finding with its recognizer."""
        indices = self._override_indices(tenant, repo)
        names = [self.policy.document.overrides[i].name for i in indices]
        target = self._variant(tenant, repo)
        if self.policy.opted_out(repo):
            return Explanation(self.policy_version, names, "opt_out_repo", {}, [])
        if target.policy.drops_path(file_path):
            return Explanation(self.policy_version, names, "path_rule", {}, [])
        findings = target._findings(fields, file_path, timeout_s)
        explained = [
            ExplainedFinding(
                field=name,
                entity=f.entity,
                start=f.start,
                end=f.end,
                score=round(f.score, 4),
                recognizer=f.recognizer,
                action=target._rules[f.entity].action,
            )
            for name in fields
            for f in findings.get(name, ())
        ]
        dropping = sorted({f.entity for f in explained if f.entity in target._drop_entities})
        if dropping:
            return Explanation(self.policy_version, names, f"entity:{dropping[0]}", {}, explained)
        result = target._apply(fields, findings)
        return Explanation(self.policy_version, names, None, result.fields, explained)

    def _override_indices(self, tenant: str | None, repo: str | None) -> tuple[int, ...]:
        if not self.policy.document.overrides:
            return ()
        key = (tenant, repo)
        indices = self._matches.get(key)
        if indices is None:
            if len(self._matches) >= 4096:
                self._matches.clear()
            indices = self._matches[key] = self.policy.matching_overrides(tenant, repo)
        return indices

    def _variant(self, tenant: str | None, repo: str | None) -> Redactor:
        """The Redactor of the effective policy for this tenant and repository."""
        indices = self._override_indices(tenant, repo)
        if not indices:
            return self
        variant = self._variants.get(indices)
        if variant is None:
            variant = self._variants[indices] = Redactor(
                self.policy.with_overrides(indices),
                key=self._key,
                spacy_model=self._spacy_model,
                cache_size=self._cache_size,
            )
        return variant

    def _findings(
        self, fields: Mapping[str, str | None], file_path: str | None, timeout_s: float | None
    ) -> dict[str, tuple[Finding, ...]]:
        self._deadline.start(timeout_s)
        try:
            return self._propagate(fields, self._analyze(fields, kind_for_path(file_path)))
        finally:
            self._deadline.clear()

    @property
    def cache(self) -> KeyedCache[tuple[Finding, ...]]:
        return self._cache

    # --- analysis --------------------------------------------------------------------------

    def _analyze(
        self, fields: Mapping[str, str | None], file_kind: FileKind
    ) -> dict[str, tuple[Finding, ...]]:
        done: dict[str, tuple[Finding, ...]] = {}
        partial: dict[str, list[Finding]] = {}
        field_keys: dict[str, bytes] = {}
        # NER line text -> (cache key, [(field, offset)]); equal lines are analysed once.
        pending: dict[str, tuple[bytes, list[tuple[str, int]]]] = {}
        for name, text in fields.items():
            if not text:
                continue
            kind = PROSE if name in self._prose_fields else file_kind
            field_key = self._cache.key(self.policy_version, "field", kind.syntax, text)
            cached = self._cache.get(field_key)
            if cached is not None:
                done[name] = cached
                continue
            field_keys[name] = field_key
            spans = prose_spans(text, kind)
            found = self._pattern_pass(text, spans)
            if self._ner_entities:
                for start, end in ner_pieces(text, spans):
                    piece = text[start:end]
                    piece_key = self._cache.key(self.policy_version, "ner", piece)
                    hit = self._cache.get(piece_key)
                    if hit is not None:
                        found.extend(_shift(hit, start))
                    else:
                        pending.setdefault(piece, (piece_key, []))[1].append((name, start))
            partial[name] = found
            self._deadline.check()
        if pending:
            for piece, piece_findings in self._ner_pass(list(pending)):
                piece_key, places = pending[piece]
                self._cache.put(piece_key, piece_findings)
                for name, offset in places:
                    partial[name].extend(_shift(piece_findings, offset))
        for name, found in partial.items():
            resolved = self._resolve(found, fields[name] or "")
            self._cache.put(field_keys[name], resolved)
            done[name] = resolved
        return done

    def _pattern_pass(self, text: str, prose: list[tuple[int, int]]) -> list[Finding]:
        found: list[Finding] = []
        if self._code_entities:
            found.extend(self._analyze_patterns(text, self._code_entities))
        if self._prose_entities and prose:
            # Same length and offsets, code blanked out: prose-only recognizers (phone)
            # neither see nor spend time on integer literals.
            masked = _keep_only(text, prose)
            if masked.strip():
                found.extend(self._analyze_patterns(masked, self._prose_entities))
        return found

    def _analyze_patterns(self, text: str, entities: list[str]) -> list[Finding]:
        results = self._analyzer.analyze(
            text=text, language=LANGUAGE, entities=entities, nlp_artifacts=self._empty
        )
        return self._accept(
            text, ((r.start, r.end, r.entity_type, r.score, _recognizer(r)) for r in results)
        )

    def _ner_pass(self, pieces: list[str]) -> Iterable[tuple[str, tuple[Finding, ...]]]:
        assert self._nlp_engine is not None
        batch = self._nlp_engine.process_batch(pieces, LANGUAGE, batch_size=NER_BATCH)
        for piece, (_, artifacts) in zip(pieces, batch, strict=True):
            self._deadline.check()
            results = self._analyzer.analyze(
                text=piece,
                language=LANGUAGE,
                entities=self._ner_entities,
                nlp_artifacts=artifacts,
            )
            spans = (_trim_possessive(piece, r.start, r.end) for r in results)
            found = self._accept(
                piece,
                (
                    (s, e, r.entity_type, r.score, _recognizer(r))
                    for (s, e), r in zip(spans, results, strict=True)
                ),
            )
            yield (
                piece,
                tuple(
                    f
                    for f in found
                    if not _looks_like_code(piece, f.start, f.end)
                    and not self._is_line_opener(piece, f.start, f.end)
                ),
            )

    def _is_line_opener(self, piece: str, start: int, end: int) -> bool:
        """A single dictionary verb/adjective/adverb opening the line ("Generate ...")."""
        word = piece[start:end]
        if " " in word or start != len(piece) - len(piece.lstrip(_OPENER_SKIP)):
            return False
        assert self._nlp_engine is not None
        return word.lower() in self._nlp_engine.opener_words

    def _accept(self, text: str, raw: Iterable[tuple[int, int, str, float, str]]) -> list[Finding]:
        """Keeps findings of acted-on entities, above threshold, not allow-listed."""
        out: list[Finding] = []
        for start, end, entity, score, recognizer in raw:
            rule = self._rules.get(entity)
            if rule is None or score < rule.threshold or end <= start:
                continue
            value = text[start:end]
            if value in self._allow_literals or any(
                r.fullmatch(value) for r in self._allow_regexes
            ):
                continue
            out.append(Finding(start, end, entity, score, recognizer))
        return out

    def _resolve(self, found: list[Finding], text: str) -> tuple[Finding, ...]:
        """Non-overlapping findings covering every flagged character.

        Higher kinds win (secret > personal data > NER), then score, then length. A loser is
        not dropped: what it flagged outside the winners is kept as fragments of its type.
        """
        order = sorted(
            set(found),
            key=lambda f: (
                -self._types[f.entity].kind,
                -f.score,
                f.start - f.end,
                f.start,
                f.entity,
                f.recognizer,
            ),
        )
        taken: list[tuple[int, int]] = []
        out: list[Finding] = []
        for finding in order:
            for start, end in _subtract(finding.start, finding.end, taken):
                if any(ch.isalnum() for ch in text[start:end]):
                    out.append(finding._replace(start=start, end=end))
                    taken.append((start, end))
        return tuple(sorted(out))

    def _propagate(
        self, fields: Mapping[str, str | None], findings: dict[str, tuple[Finding, ...]]
    ) -> dict[str, tuple[Finding, ...]]:
        """A secret or address found once is redacted wherever else it occurs in the record.

        A key assigned to `aws_secret_access_key` in the prefix may come back in the
        completion as `key = "..."`, where no pattern would recognise it.
        """
        values: dict[str, Finding] = {}
        for name, found in findings.items():
            text = fields[name] or ""
            for f in found:
                if self._types[f.entity].kind is not Kind.NER and f.end - f.start >= PROPAGATE_MIN:
                    values.setdefault(text[f.start : f.end], f)
        if not values:
            return findings
        out = dict(findings)
        for name, text in fields.items():
            if not text:
                continue
            extra: list[Finding] = []
            for value, f in values.items():
                at = text.find(value)
                while at >= 0:
                    end = at + len(value)
                    if _bounded(text, at, end):
                        extra.append(
                            Finding(at, end, f.entity, f.score, f"propagated:{f.recognizer}")
                        )
                    at = text.find(value, end)
            if extra:
                out[name] = self._resolve([*findings.get(name, ()), *extra], text)
        return out

    # --- anonymization ---------------------------------------------------------------------

    def _apply(
        self, fields: Mapping[str, str | None], findings: Mapping[str, tuple[Finding, ...]]
    ) -> RedactedFields:
        placeholders = PlaceholderMap()
        # Number placeholders in reading order, across fields in the order given.
        for name, text in fields.items():
            for f in findings.get(name, ()):
                if self._rules[f.entity].action == "replace" and text:
                    placeholders.placeholder(self._types[f.entity].label, text[f.start : f.end])
        operators = self._operators(placeholders)
        counts: Counter[str] = Counter()
        out: dict[str, str | None] = {}
        for name, text in fields.items():
            found = findings.get(name, ())
            if not text or not found:
                out[name] = text
                continue
            counts.update(f.entity for f in found)
            result = self._anonymizer.anonymize(
                text=text,
                analyzer_results=[
                    AnonymizerResult(f.entity, f.start, f.end, f.score) for f in found
                ],
                operators=operators,
                conflict_resolution=ConflictResolutionStrategy.REMOVE_INTERSECTIONS,
                merge_entities_with_spaces=False,
            )
            out[name] = result.text
        return RedactedFields(fields=out, counts=dict(counts), policy_version=self.policy_version)

    def _operators(self, placeholders: PlaceholderMap) -> dict[str, OperatorConfig]:
        operators: dict[str, OperatorConfig] = {}
        for entity, rule in self._rules.items():
            label = self._types[entity].label
            if rule.action == "mask":
                operators[entity] = OperatorConfig(
                    "mask",
                    {
                        "masking_char": rule.masking_char,
                        "chars_to_mask": 1 << 30,
                        "from_end": False,
                    },
                )
            elif rule.action == "hash":
                operators[entity] = OperatorConfig(
                    "keyed_hash", {"label": label, "hasher": self._hash}
                )
            else:
                operators[entity] = OperatorConfig(
                    "typed_placeholder", {"label": label, "placeholders": placeholders}
                )
        return operators

    def _hash(self, value: str) -> str:
        return keyed_hash(self._key, value)


def _recognizer(result: object) -> str:
    metadata = getattr(result, "recognition_metadata", None) or {}
    return str(metadata.get("recognizer_name", ""))


def _shift(findings: Iterable[Finding], offset: int) -> list[Finding]:
    return [f._replace(start=f.start + offset, end=f.end + offset) for f in findings]


def _keep_only(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with everything outside `spans` turned into spaces (newlines kept)."""
    parts: list[str] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            parts.append(_BLANK.sub(" ", text[pos:start]))
        parts.append(text[start:end])
        pos = end
    parts.append(_BLANK.sub(" ", text[pos:]))
    return "".join(parts)


_BLANK = regex.compile(r"[^\n]")


def _bounded(text: str, start: int, end: int) -> bool:
    """The occurrence is not part of a longer word or number."""
    before = start > 0 and text[start - 1].isalnum() and text[start].isalnum()
    after = end < len(text) and text[end].isalnum() and text[end - 1].isalnum()
    return not (before or after)


def _subtract(start: int, end: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = [(start, end)]
    for t_start, t_end in taken:
        next_pieces = []
        for s, e in pieces:
            if t_end <= s or e <= t_start:
                next_pieces.append((s, e))
                continue
            if s < t_start:
                next_pieces.append((s, t_start))
            if t_end < e:
                next_pieces.append((t_end, e))
        pieces = next_pieces
    return pieces


_POSSESSIVE = ("'s", "\u2019s")
_OPENER_SKIP = " \t#/*\"'`-;!<>:"
_CODE_CHARS = frozenset('_()[]{}<>=/\\:;@#$%^&*+|~"`0123456789')
_CAMEL_OR_DOTTED = regex.compile(r"\b[a-z]+[A-Z]|\w\.\w")


def _trim_possessive(text: str, start: int, end: int) -> tuple[int, int]:
    if text.endswith(_POSSESSIVE, start, end) and end - start > 2:
        return start, end - 2
    return start, end


def _looks_like_code(text: str, start: int, end: int) -> bool:
    """An NER hit that is an identifier (snake_case, camelCase, call, path), not a name."""
    value = text[start:end]
    if any(ch in _CODE_CHARS for ch in value) or _CAMEL_OR_DOTTED.search(value):
        return True
    if value == value.lower():
        return True
    return end < len(text) and text[end] == "("
