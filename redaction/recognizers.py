"""Presidio recognizers for code: secrets, path user names, offline e-mail, guarded phone.

Every recognizer here is a Presidio `EntityRecognizer`, so the `AnalyzerEngine` runs them
like any other. Pattern recognizers honour the record's `Deadline` and let a timeout
propagate: Presidio's own `PatternRecognizer` logs a regex timeout and skips the pattern,
which for a secret scanner means failing open.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import regex
import tldextract
from presidio_analyzer import EntityRecognizer, LocalRecognizer, Pattern, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    EmailRecognizer,
    IpRecognizer,
    PhoneRecognizer,
)

from redaction.errors import RedactionTimeout

CONTEXT_BOOST = 0.35
CONTEXT_WINDOW = 100


class Deadline:
    """The time limit of the record being redacted, shared by the redactor and recognizers."""

    def __init__(self) -> None:
        self._end: float | None = None

    def start(self, seconds: float | None) -> None:
        self._end = None if seconds is None else time.monotonic() + seconds

    def clear(self) -> None:
        self._end = None

    def remaining(self) -> float | None:
        """Seconds left (None: no limit); raises RedactionTimeout once the limit has passed."""
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise RedactionTimeout("record exceeded its redaction time limit")
        return left

    def check(self) -> None:
        self.remaining()


Validator = Callable[[str, "regex.Match[str]"], bool]


@dataclass(frozen=True)
class SecretPattern:
    """One regex of a recognizer. The finding is the `value` group if the regex has one.

    `keywords` (lower case) gate the regex: it runs only if one occurs in the text, which
    keeps a catalogue of many patterns cheap on ordinary code.
    """

    name: str
    regex: str
    score: float
    keywords: tuple[str, ...] = ()
    flags: int = 0
    validate: Validator | None = None
    overlapped: bool = False


class RegexRecognizer(LocalRecognizer):
    """Runs `SecretPattern`s for one entity; optional context words raise the score."""

    def __init__(
        self,
        name: str,
        entity: str,
        patterns: Sequence[SecretPattern],
        deadline: Deadline,
        context_words: Sequence[str] = (),
    ) -> None:
        # Context is handled here (by characters before the match) rather than by Presidio's
        # lemma enhancer, which needs a spaCy parse of the whole text we avoid making.
        super().__init__(supported_entities=[entity], name=name, supported_language="en")
        self._deadline = deadline
        self._patterns = [(p, regex.compile(p.regex, p.flags)) for p in patterns]
        self._context = tuple(w.lower() for w in context_words)

    def load(self) -> None:
        """Nothing to load: patterns compile in the constructor."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        lowered: str | None = None
        for pattern, compiled in self._patterns:
            if pattern.keywords:
                if lowered is None:
                    lowered = text.lower()
                if not any(k in lowered for k in pattern.keywords):
                    continue
            try:
                matches = list(
                    compiled.finditer(
                        text, overlapped=pattern.overlapped, timeout=self._deadline.remaining()
                    )
                )
            except TimeoutError as exc:
                raise RedactionTimeout("a recognizer pattern ran past the time limit") from exc
            for match in matches:
                start, end = match.span("value") if "value" in compiled.groupindex else match.span()
                if start < 0 or end <= start:
                    continue
                if pattern.validate and not pattern.validate(text[start:end], match):
                    continue
                results.append(self._result(text, start, end, pattern))
        return results

    def _result(self, text: str, start: int, end: int, pattern: SecretPattern) -> RecognizerResult:
        score = pattern.score
        if self._context:
            before = text[max(0, start - CONTEXT_WINDOW) : start].lower()
            if any(word in before for word in self._context):
                score = min(1.0, score + CONTEXT_BOOST)
        return RecognizerResult(
            entity_type=self.supported_entities[0],
            start=start,
            end=end,
            score=score,
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


class PemPrivateKeyRecognizer(LocalRecognizer):
    """PEM private key blocks of every header kind, including cut-off ones.

    IDE payloads are windows on a file: a prefix can end inside a key (BEGIN without END)
    and a suffix can start inside one (END without BEGIN). Both halves are redacted.
    """

    _BEGIN = regex.compile(r"-{4,5} ?BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}")
    _END = regex.compile(r"-{4,5} ?END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}")
    # Base64 body, headers like "Proc-Type: 4,ENCRYPTED", literal "\n" escapes in strings.
    _BODY = frozenset(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\\:,.- \t\r\n"
    )

    def __init__(self, deadline: Deadline, entity: str = "PRIVATE_KEY") -> None:
        super().__init__(supported_entities=[entity], name="private_key", supported_language="en")
        self._deadline = deadline

    def load(self) -> None:
        """Nothing to load."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if "PRIVATE KEY" not in text:
            return []
        self._deadline.check()
        markers = sorted(
            [(m.start(), m.end(), True) for m in self._BEGIN.finditer(text)]
            + [(m.start(), m.end(), False) for m in self._END.finditer(text)]
        )
        spans: list[tuple[int, int]] = []
        open_at: int | None = None
        open_body_end = 0
        for start, end, is_begin in markers:
            if is_begin:
                if open_at is None:
                    open_at, open_body_end = start, end
                continue
            if open_at is not None:
                spans.append((open_at, end))
                open_at = None
            else:
                spans.append((self._body_start(text, start), end))
        if open_at is not None:
            spans.append((open_at, self._body_end(text, open_body_end)))
        return [
            RecognizerResult(
                entity_type=self.supported_entities[0],
                start=s,
                end=e,
                score=1.0,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                },
            )
            for s, e in spans
            if e > s
        ]

    def _body_start(self, text: str, end_marker: int) -> int:
        i = end_marker
        while i > 0 and text[i - 1] in self._BODY:
            i -= 1
        return i

    def _body_end(self, text: str, after_begin: int) -> int:
        i = after_begin
        while i < len(text) and text[i] in self._BODY:
            i += 1
        return i


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer with a bounded pattern and an offline suffix list.

    Presidio's own pattern backtracks quadratically on long base64 runs (a 100 KB blob
    takes tens of seconds), and its `tldextract.extract` downloads the public suffix list
    on first use. Here the suffix list is the snapshot bundled with tldextract, plus the
    private suffixes companies use on their networks.
    """

    PATTERNS = [
        Pattern(
            "email_bounded",
            r"(?<![\w.+%-])[\w.+%-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)"
            r"{1,8}[A-Za-z]{2,63}(?![\w-])",
            0.5,
        )
    ]
    INTERNAL_SUFFIXES = ("internal", "corp", "local", "lan", "intranet", "localdomain", "home")

    def __init__(self, deadline: Deadline) -> None:
        super().__init__(patterns=list(self.PATTERNS), name="email")
        self._deadline = deadline
        self._extract = tldextract.TLDExtract(
            cache_dir=None,
            suffix_list_urls=(),
            fallback_to_snapshot=True,
            extra_suffixes=self.INTERNAL_SUFFIXES,
        )

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        if "@" not in text:
            return []
        self._deadline.check()
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not self._in_url_authority(text, r.start)]

    @staticmethod
    def _in_url_authority(text: str, start: int) -> bool:
        """`pw@host` in `scheme://user:pw@host` is a password and a host, not an address."""
        window = text[max(0, start - 300) : start]
        cut = max(window.rfind(c) for c in " \t\n\"'`<>(")
        return "://" in window[cut + 1 :]

    def validate_result(self, pattern_text: str) -> bool:
        return self._extract(pattern_text.rsplit("@", 1)[-1]).suffix != ""


class GuardedPhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer, run only where a phone-shaped digit run exists.

    python-phonenumbers scans the whole text once per region; a cheap digit-run test
    skips it for the many payloads that hold no candidate at all.
    """

    _CANDIDATE = regex.compile(r"\d(?:[ \t().\-/]{0,3}\d){6,}")
    _MARGIN = 4

    def __init__(self, deadline: Deadline) -> None:
        super().__init__(name="phone")
        self._deadline = deadline

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        windows: list[list[int]] = []
        for match in self._CANDIDATE.finditer(text):
            # "+", "(" and a country code's separator may precede the first digit
            start, end = max(0, match.start() - self._MARGIN), match.end() + 1
            if windows and start <= windows[-1][1]:
                windows[-1][1] = end
            else:
                windows.append([start, end])
        results: list[RecognizerResult] = []
        for start, end in windows:
            # python-phonenumbers scans its input once per region: scanning only the
            # candidate windows, not the whole text, makes this recognizer several times
            # cheaper on long payloads, with the same findings.
            self._deadline.check()
            for r in super().analyze(text[start:end], entities, nlp_artifacts):
                r.start, r.end = r.start + start, r.end + start
                if self._formatted_or_named(text, r.start, r.end):
                    results.append(r)
        return results

    _CONTEXT = regex.compile(
        r"phone|\btel\b|telephone|mobile|\bcell|\bcall|\bsms\b|\bfax\b|whatsapp|contact"
        r"|on-?call|\bdial",
        regex.IGNORECASE,
    )

    @classmethod
    def _formatted_or_named(cls, text: str, start: int, end: int) -> bool:
        """Written like a phone number (+, spaces, dashes, parentheses), or a bare digit
        run that a nearby word calls a phone number: `2147483647` alone is an integer."""
        if not text[start:end].isdigit():
            return True
        return bool(cls._CONTEXT.search(text, max(0, start - 60), start))


class GuardedIpRecognizer(IpRecognizer):
    """Presidio's IP recognizer, run only where a dotted quad or an IPv6 group may be."""

    _CANDIDATE = regex.compile(r"\d\.\d{1,3}\.\d|::|[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]")

    def __init__(self, deadline: Deadline) -> None:
        super().__init__(name="ip_address")
        self._deadline = deadline

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        if not self._CANDIDATE.search(text):
            return []
        self._deadline.check()
        return super().analyze(text, entities, nlp_artifacts, regex_flags)


# --- validators ----------------------------------------------------------------------------

_PLACEHOLDER_MARKERS = (
    "example",
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "your_",
    "your-",
    "yourkey",
    "yourtoken",
    "yourpassword",
    "xxxx",
    "****",
    "....",
    "dummy",
    "redacted",
    "replace_me",
    "replaceme",
    "insert_",
    "<",
    ">",
    "${",
    "{{",
    "%(",
    "$(",
)
_COMMON_VALUES = frozenset(
    "password passwd secret token none null nil true false undefined string value key "
    "default empty test admin required optional hidden text str bytes int any".split()
)
_IDENTIFIER = regex.compile(r"[A-Za-z_$][A-Za-z0-9_]*")
_SLUG = regex.compile(r"[a-z]+(?:[-_./ :][a-z]+)*")
_DOTTED = regex.compile(r"[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)+")


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`'s own character distribution."""
    if not value:
        return 0.0
    counts: dict[str, int] = {}
    for ch in value:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def is_placeholder(value: str) -> bool:
    """Documentation and template values: `changeme`, `<YOUR_API_KEY>`, `xxxx`, `EXAMPLE`."""
    low = value.lower()
    if any(marker in low for marker in _PLACEHOLDER_MARKERS):
        return True
    if low in _COMMON_VALUES:
        return True
    return len(set(low)) <= 2


def _char_classes(value: str) -> int:
    return (
        any(c.islower() for c in value)
        + any(c.isupper() for c in value)
        + any(c.isdigit() for c in value)
        + any(not c.isalnum() for c in value)
    )


def not_placeholder(value: str, _match: regex.Match[str]) -> bool:
    return not is_placeholder(value)


def random_looking(min_entropy: float) -> Validator:
    """Not a placeholder, mixes character classes, and has at least `min_entropy` bits/char."""

    def check(value: str, _match: regex.Match[str]) -> bool:
        return (
            not is_placeholder(value)
            and _char_classes(value) >= 2
            and shannon_entropy(value) >= min_entropy
        )

    return check


_RANDOM_35 = random_looking(3.5)
_PASSWORD_WORDS = ("pass", "pwd")


def assigned_secret(value: str, match: regex.Match[str]) -> bool:
    """A value assigned to a secret-like name: code-aware, entropy-gated.

    Identifiers, attribute access, calls, slugs (`refresh_token`, `bcrypt`), paths and URLs
    are not secrets. A quoted value under a password name needs only to look like one; other
    names (token, key, secret) need a random-looking value.
    """
    if is_placeholder(value) or "(" in value or _DOTTED.fullmatch(value):
        return False
    if _SLUG.fullmatch(value) or value.startswith(("http://", "https://")) or _is_path(value):
        return False
    start = match.start("value")
    quoted = start > 0 and match.string[start - 1] in "\"'`"
    keyword = (match.groupdict().get("kw") or "").lower()
    if quoted and any(word in keyword for word in _PASSWORD_WORDS):
        return len(value) >= 6 and not any(c.isspace() for c in value)
    if any(c.isspace() for c in value):
        return False
    if quoted:
        return len(value) >= 10 and _char_classes(value) >= 2 and shannon_entropy(value) >= 3.0
    # Unquoted: a literal in YAML, .env, shell or Dockerfile, but an identifier in code.
    if any(word in keyword for word in _PASSWORD_WORDS) and not _IDENTIFIER.fullmatch(value):
        # `password: Nimbus!2922`: letters with digits or symbols, not an identifier
        return len(value) >= 8 and any(c.isalpha() for c in value) and _char_classes(value) >= 2
    return (
        len(value) >= 12
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and shannon_entropy(value) >= (3.0 if len(value) >= 20 else 3.5)
    )


_PATH = regex.compile(r"(?:~|\.{1,2})?/[\w.\-]+(?:/[\w.\-]*)*")


def _is_path(value: str) -> bool:
    """`/etc/app/key.pem`, `./certs`, `~/.ssh/id`: yes; base64 that opens with '/': no."""
    if not _PATH.fullmatch(value):
        return False
    return value.count("/") >= 2 or len(value) < 16 or _char_classes(value) < 3


def url_password(value: str, _match: regex.Match[str]) -> bool:
    """user:password of a URL, unless the password is a template (`${DB_PASS}`, `<pw>`)."""
    password = value.split(":", 1)[1] if ":" in value else value
    low = password.lower()
    return not any(m in low for m in ("${", "{{", "<", "%(", "$(", "***", "xxx", "example"))


_GENERIC_ACCOUNTS = frozenset(
    "user username users runner ubuntu root admin administrator shared public default guest "
    "ec2-user vagrant node app docker circleci travis jenkins git www-data nobody me you "
    "yourname your_name your-name your_username yourusername name example someone somebody "
    "foo bar test dev developer build ci linuxbrew".split()
) | {"default user", "all users"}


def personal_account(value: str, _match: regex.Match[str]) -> bool:
    """A home-directory user name that is a person's, not a service account or template."""
    if value.lower() in _GENERIC_ACCOUNTS:
        return False
    return not any(c in value for c in "$%{}<>*")


_BASE62_ORDERS = (
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
)


def _base62(number: int, alphabet: str, width: int) -> str:
    digits = []
    while number:
        number, rest = divmod(number, 62)
        digits.append(alphabet[rest])
    return "".join(reversed(digits)).rjust(width, alphabet[0])


def crc32_checksum_ok(token: str) -> bool:
    """GitHub-style token checksum: the last 6 characters are the base62 CRC32 of the
    random part before them (`ghp_` + 30 random + 6 checksum; npm_ tokens alike)."""
    body = token.split("_", 1)[-1]
    if len(body) != 36 or not body.isalnum():
        return False
    random_part, checksum = body[:30], body[30:]
    crc = zlib.crc32(random_part.encode("ascii"))
    return any(_base62(crc, alphabet, 6) == checksum for alphabet in _BASE62_ORDERS)


def checksum_or_random(min_entropy: float) -> Validator:
    """A token whose checksum holds, or one that at least looks random (old or truncated)."""
    looks_random = random_looking(min_entropy)

    def check(value: str, match: regex.Match[str]) -> bool:
        return crc32_checksum_ok(value) or looks_random(value, match)

    return check


def unchecked_token(value: str, match: regex.Match[str]) -> bool:
    """A random-looking token whose checksum does not hold (the checksum pattern has it)."""
    return not crc32_checksum_ok(value) and _RANDOM_35(value, match)


def after_context(
    words: regex.Pattern[str], window: int, then: Validator | None = None
) -> Validator:
    """The value is preceded, within `window` characters, by one of the context `words`."""

    def check(value: str, match: regex.Match[str]) -> bool:
        start = match.start("value") if "value" in match.re.groupindex else match.start()
        if not words.search(match.string, max(0, start - window), start):
            return False
        return then is None or then(value, match)

    return check


_DATADOG_NAME = regex.compile(
    r"datadog|(?<![A-Za-z])dd[_.\-]?(?:api|app|application|client)", regex.IGNORECASE
)
# a section header alone on its line: `datadog:` (YAML) or `[datadog]` (TOML / INI)
_DATADOG_SECTION = regex.compile(
    r"[ \t]*\[?[\w.\-]*datadog[\w.\-]*\]?:?[ \t]*\r?", regex.IGNORECASE
)


# a name/value pair's name line (Kubernetes env, CI variables): `- name: DATADOG_APP_KEY`
_DATADOG_ENTRY = regex.compile(
    r"[ \t]*-?[ \t]*(?:name|key)[ \t]*:[ \t]*[\"']?[\w.\-]*"
    r"(?:datadog|(?<![A-Za-z])dd[_.\-]?(?:api|app|application|client))[\w.\-]*[\"']?[ \t]*\r?",
    regex.IGNORECASE,
)
_VALUE_KEY = regex.compile(r"[ \t]*-?[ \t]*value[ \t]*:", regex.IGNORECASE)


def datadog_context(value: str, match: regex.Match[str]) -> bool:
    """Hex named for Datadog on its own line (`DD_API_KEY=...`), under a `datadog:`
    section on the line above, or the `value:` of a pair whose `name:` line above names
    Datadog. A hash a few lines below a Datadog key is just a hash."""
    text, start = match.string, match.start("value")
    line_start = text.rfind("\n", 0, start) + 1
    named = _DATADOG_NAME.search(text, line_start, start)
    if not named and line_start > 0:
        previous = text.rfind("\n", 0, line_start - 1) + 1
        named = _DATADOG_SECTION.fullmatch(text, previous, line_start - 1) or (
            _VALUE_KEY.match(text, line_start, start)
            and _DATADOG_ENTRY.fullmatch(text, previous, line_start - 1)
        )
    return bool(named) and mixed_hex(value, match)


_TWILIO = regex.compile(r"twilio", regex.IGNORECASE)
_HEX32 = regex.compile(r"[0-9a-fA-F]{32}")
_TWILIO_LINE = regex.compile(r"twilio|auth_?token|Client\(", regex.IGNORECASE)


def twilio_context(value: str, match: regex.Match[str]) -> bool:
    """32 hex is a Twilio auth token only where Twilio is named: the file mentions Twilio
    shortly before, and the line itself names a token or a client, or the line above is a
    heading naming Twilio. Other hex nearby (a checksum line) stays a hash."""
    text, start = match.string, match.start("value")
    if not _TWILIO.search(text, max(0, start - 300), start):
        return False
    line_start = text.rfind("\n", 0, start) + 1
    previous = text.rfind("\n", 0, max(0, line_start - 1)) + 1 if line_start else line_start
    named = _TWILIO_LINE.search(text, line_start, start) or (
        # a heading such as "# Twilio credentials", not the line of another token
        _TWILIO.search(text, previous, line_start) and not _HEX32.search(text, previous, line_start)
    )
    return bool(named) and mixed_hex(value, match)


def mixed_hex(value: str, _match: regex.Match[str]) -> bool:
    """Random hex has letters and digits; `deadbeef...` runs and counters do not pass."""
    return (
        any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and shannon_entropy(value) >= 3.0
        and not is_placeholder(value)
    )


_SAS_FIELDS = regex.compile(r"(?<![A-Za-z])(?:sv|se|sp|sr|spr|srt|ss|st)=", regex.IGNORECASE)


def sas_signature(value: str, match: regex.Match[str]) -> bool:
    """`sig=` of an Azure shared access signature: `sv=` and `se=`/`sp=` in the same query."""
    text = match.string
    left = max(text.rfind(c, 0, match.start()) for c in " \t\n\"'`<>(")
    right_cut = [i for i in (text.find(c, match.end()) for c in " \t\n\"'`<>)") if i >= 0]
    right = min(right_cut) if right_cut else len(text)
    fields = {m.group().lower() for m in _SAS_FIELDS.finditer(text, left + 1, right)}
    return "sv=" in fields and bool(fields & {"se=", "sp="}) and not is_placeholder(value)


def pem_value(value: str, _match: regex.Match[str]) -> bool:
    """An escaped PEM private key whose body is not a documentation stand-in."""
    body = regex.sub(r"-----[A-Z ]+-----|\\n|\s", "", value)
    return "PRIVATE KEY" in value and len(body) >= 16 and not is_placeholder(body)


# --- the secret catalogue ------------------------------------------------------------------

_CI = regex.IGNORECASE
_KW = (
    r"(?P<kw>passwd|password|passphrase|pwd|secret|token|api[_.\-]?key|apikey|access[_.\-]?key"
    r"|private[_.\-]?key|auth[_.\-]?key|authorization|credentials?|signing[_.\-]?key"
    r"|encryption[_.\-]?key|session[_.\-]?key)"
)
_QUOTED_VALUE = (
    r"(?:\"(?P<value>[^\"\n]{4,256})\"|'(?P<value>[^'\n]{4,256})'|`(?P<value>[^`\n]{4,256})`)"
)
_VALUE = r"(?:" + _QUOTED_VALUE + r"|(?P<value>[^\s\"'`;,)\]}<>]{8,256}))"
_OPTIONAL_SCHEME = r"(?:(?:Bearer|Basic|Token)\s+)?"


@dataclass(frozen=True)
class SecretKind:
    """A named recognizer of the catalogue: entity plus patterns."""

    name: str
    entity: str
    patterns: tuple[SecretPattern, ...]


SECRET_KINDS: tuple[SecretKind, ...] = (
    SecretKind(
        "aws_access_key",
        "AWS_ACCESS_KEY",
        (
            SecretPattern(
                "aws_access_key_id",
                r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}\b",
                0.95,
                keywords=("akia", "asia", "abia", "acca", "a3t"),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "aws_secret_key",
        "AWS_SECRET_KEY",
        (
            SecretPattern(
                "aws_secret_assigned",
                r"(?:secret[_.\-]?access[_.\-]?key|aws[_.\-]?secret(?:[_.\-]?access)?"
                r"(?:[_.\-]?key)?)[\w.\-]{0,20}[\"'`\]]{0,2}\s{0,4}"
                r"(?::=|=>|=|:|,)\s{0,4}[\"'`]?(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
                0.95,
                keywords=("secret",),
                flags=_CI,
                validate=random_looking(3.5),
            ),
            SecretPattern(
                # AWS's secret-key shape quoted anywhere (`key = '...'`): 40 base64 characters
                # with a '/' or '+', both cases and digits. Over-redacting a look-alike hash is
                # the safe side of this trade.
                "aws_secret_shape_quoted",
                r"[\"'`](?P<value>(?=[A-Za-z0-9+]*[/+])(?=[^\"'`]*[a-z])(?=[^\"'`]*[A-Z])"
                r"(?=[^\"'`]*[0-9])[A-Za-z0-9/+]{40})[\"'`]",
                0.8,
                keywords=("'", '"', "`"),
                validate=random_looking(4.0),
            ),
            SecretPattern(
                "aws_secret_near_key_id",
                r"(?:AKIA|ASIA)[A-Z2-7]{16}[\s\S]{0,120}?(?<![A-Za-z0-9/+])"
                r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
                0.9,
                keywords=("akia", "asia"),
                validate=random_looking(4.0),
            ),
        ),
    ),
    SecretKind(
        "github_token",
        "GITHUB_TOKEN",
        (
            SecretPattern(
                # The current format carries a CRC32 checksum: a match is certainly a token.
                "github_classic_checksum",
                r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b",
                1.0,
                keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
                validate=lambda value, _m: crc32_checksum_ok(value),
            ),
            SecretPattern(
                # Without a valid checksum (older, truncated or hand-made): still redacted at
                # a lower score if it looks random; a policy threshold above 0.6 drops these.
                "github_classic",
                r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,251}\b",
                0.6,
                keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
                validate=unchecked_token,
            ),
            SecretPattern(
                "github_fine_grained",
                r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b",
                0.95,
                keywords=("github_pat_",),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "gitlab_token",
        "GITLAB_TOKEN",
        (
            SecretPattern(
                "gitlab",
                r"\b(?:glpat|gldt|glrt|glptt|glsoat|glcbt|glft|glimt|glagent|gloas)-"
                r"[A-Za-z0-9_\-]{20,255}(?:\.[A-Za-z0-9_\-]{1,64}){0,3}",
                0.95,
                keywords=(
                    "glpat-",
                    "gldt-",
                    "glrt-",
                    "glptt-",
                    "glsoat-",
                    "glcbt-",
                    "glft-",
                    "glimt-",
                    "glagent-",
                    "gloas-",
                ),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "slack_token",
        "SLACK_TOKEN",
        (
            SecretPattern(
                "slack_token",
                r"\bxox[abposre]-[0-9A-Za-z][0-9A-Za-z\-]{8,250}",
                0.95,
                keywords=("xox",),
                validate=random_looking(2.5),
            ),
            SecretPattern(
                "slack_app_token",
                r"\bxapp-\d-[A-Z0-9]{6,}-\d{6,}-[A-Za-z0-9]{20,}",
                0.95,
                keywords=("xapp-",),
            ),
        ),
    ),
    SecretKind(
        "slack_webhook",
        "SLACK_WEBHOOK",
        (
            SecretPattern(
                "slack_webhook",
                r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,}",
                0.95,
                keywords=("hooks.slack.com",),
            ),
        ),
    ),
    SecretKind(
        "stripe_key",
        "STRIPE_KEY",
        (
            SecretPattern(
                "stripe_live",
                r"\b(?:sk|rk)_live_[A-Za-z0-9]{20,247}\b",
                0.95,
                keywords=("_live_",),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "anthropic_api_key",
        "ANTHROPIC_API_KEY",
        (
            SecretPattern(
                "anthropic",
                r"\bsk-ant-[A-Za-z0-9_\-]{20,255}",
                0.95,
                keywords=("sk-ant-",),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "openai_api_key",
        "OPENAI_API_KEY",
        (
            SecretPattern(
                "openai",
                r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,255}",
                0.9,
                keywords=("sk-",),
                validate=random_looking(3.0),
            ),
        ),
    ),
    SecretKind(
        "google_api_key",
        "GOOGLE_API_KEY",
        (
            SecretPattern(
                "google_api_key",
                r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])",
                0.95,
                keywords=("aiza",),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "jwt",
        "JWT",
        (
            SecretPattern(
                "jwt",
                r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
                0.95,
                keywords=("eyj",),
            ),
        ),
    ),
    SecretKind(
        "url_credentials",
        "URL_CREDENTIALS",
        (
            SecretPattern(
                "url_user_password",
                r"\b[A-Za-z][A-Za-z0-9+.\-]{1,30}://(?P<value>[^\s/?#@\"'`<>:]{0,256}:"
                r"[^\s/?#\"'`<>]{1,256})@(?=[^\s/?#\"'`<>@])",
                0.9,
                keywords=("://",),
                validate=url_password,
            ),
            SecretPattern(
                "url_token_user",
                r"\b(?:https?|git|ssh)://(?P<value>[A-Za-z0-9_\-]{20,256})@(?=[^\s/?#\"'`<>@])",
                0.9,
                keywords=("://",),
                validate=random_looking(3.5),
            ),
        ),
    ),
    SecretKind(
        "generic_secret",
        "GENERIC_SECRET",
        (
            SecretPattern(
                "assignment",
                _KW
                + r"[\w.\-]{0,40}[\"'`\]]{0,2}"
                # a type annotation (TypeScript, Kotlin, Python) between name and value
                + r"(?:[ \t]{0,4}:[ \t]{0,4}[A-Za-z_][\w.\[\]]{0,30}(?=[ \t]{0,4}=))?"
                # aligned columns (Terraform, Go structs) allow a run of spaces
                + r"[ \t]{0,24}(?:===?|!==?|:=|=>|=|:|\|\||\?\?)[ \t]{0,24}"
                + _OPTIONAL_SCHEME
                + _VALUE,
                0.7,
                keywords=("pass", "pwd", "secret", "token", "key", "credential", "auth"),
                flags=_CI,
                validate=assigned_secret,
                # `X = process.env.X || 'value'`: the first, rejected match must not hide
                # the second
                overlapped=True,
            ),
            SecretPattern(
                # Kubernetes / CI env lists: `- name: DB_PASSWORD` then `value: ...`
                "name_value_pair",
                r"name:[ \t]{0,4}[\"']?\w{0,40}?" + _KW + r"\w{0,40}[\"']?[ \t]*\r?\n"
                r"[ \t]{0,40}value:[ \t]{0,4}" + _VALUE,
                0.7,
                keywords=("value:",),
                flags=_CI,
                validate=assigned_secret,
            ),
            SecretPattern(
                "call_or_pair",
                _KW + r"[\w.\-]{0,40}[\"'`]\s{0,4}[(,]\s{0,4}" + _QUOTED_VALUE,
                0.7,
                keywords=("pass", "pwd", "secret", "token", "key", "credential", "auth"),
                flags=_CI,
                validate=assigned_secret,
            ),
            SecretPattern(
                "sql_password",
                r"\b(?P<kw>identified\s+by|password)\s+'(?P<value>[^'\n]{4,256})'"
                r"|\bset\s+(?P<kw>password)\b[^=\n]{0,80}=\s{0,4}'(?P<value>[^'\n]{4,256})'",
                0.7,
                keywords=("identified", "password"),
                flags=_CI,
                validate=not_placeholder,
            ),
            SecretPattern(
                "cli_flag",
                r"(?<![\w-])--[\w-]{0,30}?" + _KW + r"[\w-]{0,20}"
                r"[ \t]+[\"']?(?P<value>[^\s\"'\-][^\s\"']{3,255})",
                0.7,
                keywords=("--",),
                flags=_CI,
                validate=assigned_secret,
            ),
            SecretPattern(
                "dockerfile_env",
                r"(?m)^[ \t]*ENV[ \t]+\w*?" + _KW + r"\w*[ \t]+(?P<value>[^\s\"'=][^\s\"']{3,255})",
                0.7,
                keywords=("env",),
                flags=_CI,
                validate=assigned_secret,
            ),
        ),
    ),
    SecretKind(
        "npm_token",
        "NPM_TOKEN",
        (
            SecretPattern(
                "npm_checksum",
                r"\bnpm_[A-Za-z0-9]{36}(?![A-Za-z0-9])",
                1.0,
                keywords=("npm_",),
                validate=lambda value, _m: crc32_checksum_ok(value),
            ),
            SecretPattern(
                "npm_token",
                r"\bnpm_[A-Za-z0-9]{36}(?![A-Za-z0-9])",
                0.6,
                keywords=("npm_",),
                validate=unchecked_token,
            ),
            SecretPattern(
                # .npmrc: `//registry.npmjs.org/:_authToken=...` (legacy tokens are UUIDs).
                "npmrc_auth",
                r"(?:_authToken|_auth|_password)\s{0,4}=\s{0,4}[\"']?(?P<value>[^\s\"'$]{8,512})",
                0.9,
                keywords=("_auth", "_password"),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "pypi_token",
        "PYPI_TOKEN",
        (
            SecretPattern(
                # A macaroon whose first caveat names pypi.org (or test.pypi.org).
                "pypi_upload_token",
                r"\bpypi-(?:AgEIcHlwaS5vcmc|AgENdGVzdC5weXBpLm9yZw)[A-Za-z0-9_\-]{32,}",
                1.0,
                keywords=("pypi-ag",),
            ),
        ),
    ),
    SecretKind(
        "azure_storage_key",
        "AZURE_STORAGE_KEY",
        (
            SecretPattern(
                "azure_account_key",
                r"(?:AccountKey|SharedAccessKey|PrimaryKey|SecondaryKey)\s{0,2}=\s{0,2}"
                r"(?P<value>[A-Za-z0-9+/]{30,}={0,2})",
                0.95,
                keywords=("accountkey", "sharedaccesskey", "primarykey", "secondarykey"),
                flags=_CI,
                validate=random_looking(3.5),
            ),
        ),
    ),
    SecretKind(
        "azure_sas_token",
        "AZURE_SAS_TOKEN",
        (
            SecretPattern(
                "azure_sas_signature",
                r"(?<![A-Za-z0-9])sig=(?P<value>[A-Za-z0-9%+/=_\-]{20,256})",
                0.95,
                keywords=("sig=",),
                validate=sas_signature,
            ),
        ),
    ),
    SecretKind(
        "twilio",
        "TWILIO_KEY",
        (
            SecretPattern(
                "twilio_sid",
                r"\b(?:AC|SK)[0-9a-f]{32}\b",
                0.9,
                keywords=("ac", "sk"),
                validate=mixed_hex,
            ),
            SecretPattern(
                "twilio_auth_token",
                r"(?<![0-9A-Za-z])(?P<value>[0-9a-f]{32})(?![0-9A-Za-z])",
                0.85,
                keywords=("twilio",),
                validate=twilio_context,
            ),
        ),
    ),
    SecretKind(
        "sendgrid_api_key",
        "SENDGRID_API_KEY",
        (
            SecretPattern(
                "sendgrid",
                r"\bSG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{30,64}(?![A-Za-z0-9_\-])",
                0.95,
                keywords=("sg.",),
                validate=not_placeholder,
            ),
        ),
    ),
    SecretKind(
        "vault_token",
        "VAULT_TOKEN",
        (
            SecretPattern(
                "vault_prefixed",
                r"\bhv[sbr]\.[A-Za-z0-9_\-]{24,}",
                0.95,
                keywords=("hvs.", "hvb.", "hvr."),
                validate=random_looking(3.5),
            ),
            SecretPattern(
                # Vault < 1.10: `s.` + 24 characters; only near a mention of Vault.
                "vault_legacy",
                r"(?<![\w.])(?P<value>[sb]\.[A-Za-z0-9]{24})(?![\w.])",
                0.85,
                keywords=("vault",),
                validate=after_context(
                    regex.compile(r"vault", regex.IGNORECASE), 200, random_looking(3.5)
                ),
            ),
        ),
    ),
    SecretKind(
        "datadog_key",
        "DATADOG_KEY",
        (
            SecretPattern(
                # API keys are 32 hex, application keys 40; hex of that length is also an MD5
                # or a git SHA, so only a Datadog name before it makes it a key.
                "datadog_key",
                r"(?<![0-9A-Za-z])(?P<value>[0-9a-f]{40}|[0-9a-f]{32})(?![0-9A-Za-z])",
                0.9,
                keywords=("datadog", "dd_", "dd-", "dd.", "ddapi", "ddapp"),
                validate=datadog_context,
            ),
        ),
    ),
    SecretKind(
        "gcp_service_account",
        "GCP_SERVICE_ACCOUNT_KEY",
        (
            SecretPattern(
                # The JSON-escaped PEM of a service-account key file, to its closing quote
                # (or the end of the window when the payload cuts it off).
                "gcp_private_key",
                r"[\"']private_key[\"']\s{0,4}:\s{0,4}[\"']"
                r"(?P<value>-----BEGIN[A-Z ]{0,20} PRIVATE KEY-----(?:[^\"'\\]|\\.){0,8192})",
                1.0,
                keywords=("private_key",),
                validate=pem_value,
            ),
            SecretPattern(
                "gcp_private_key_id",
                r"[\"']private_key_id[\"']\s{0,4}:\s{0,4}[\"'](?P<value>[0-9a-f]{40})[\"']",
                0.95,
                keywords=("private_key_id",),
            ),
        ),
    ),
    SecretKind(
        "path_username",
        "PATH_USERNAME",
        (
            SecretPattern(
                "posix_home",
                r"(?<![\w.\-])/(?:home|Users|usr/home|var/home|export/home)/"
                r"(?P<value>[A-Za-z0-9][A-Za-z0-9._\-]{0,63})(?![A-Za-z0-9._\-])",
                0.85,
                keywords=("/home/", "/users/"),
                validate=personal_account,
            ),
            SecretPattern(
                "windows_profile",
                r"(?<![A-Za-z0-9])[A-Za-z]:(?:\\{1,2}|/)(?:Users|Documents and Settings)"
                r"(?:\\{1,2}|/)(?P<value>[^\\/:*?\"<>|\s'`]+(?: [^\\/:*?\"<>|\s'`]+){0,3}"
                r"(?=\\|/)|[^\\/:*?\"<>|\s'`]+)",
                0.85,
                keywords=("users", "documents and settings"),
                flags=_CI,
                validate=personal_account,
            ),
        ),
    ),
)


RecognizerFactory = Callable[[Deadline], EntityRecognizer]


def _kind_factory(kind: SecretKind) -> RecognizerFactory:
    return lambda deadline: RegexRecognizer(kind.name, kind.entity, kind.patterns, deadline)


# name -> (entity, factory). Recognizers are registered, and chosen by entity, by name.
RECOGNIZERS: dict[str, tuple[str, RecognizerFactory]] = {
    **{kind.name: (kind.entity, _kind_factory(kind)) for kind in SECRET_KINDS},
    "private_key": ("PRIVATE_KEY", PemPrivateKeyRecognizer),
    "email": ("EMAIL_ADDRESS", OfflineEmailRecognizer),
    "phone": ("PHONE_NUMBER", GuardedPhoneRecognizer),
    "ip_address": ("IP_ADDRESS", GuardedIpRecognizer),
}
