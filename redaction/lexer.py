"""Finds the prose inside code: comments and string literals, by file type.

NER runs only on what this returns, so a person-name model never sees identifiers. The
lexer is deliberately forgiving: an unterminated string or comment runs to the end of its
line (or of the text), and an unknown file type gets the union of common syntaxes. When in
doubt it returns more prose, not less: more text under NER costs time, not privacy.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import regex

# Longest-first alternatives; the first that matches at a position wins.
_TRIPLE = r'"""[\s\S]*?(?:"""|\Z)' + r"|'''[\s\S]*?(?:'''|\Z)"
_BLOCK = r"/\*[\s\S]*?(?:\*/|\Z)"
_HTML = r"<!--[\s\S]*?(?:-->|\Z)"
_HASH = r"#[^\n]*"
_HASH_SPACED = r"(?<![^\s])#[^\n]*"  # unknown syntax: '#' only after whitespace / line start
_SLASH = r"//[^\n]*"
_SLASH_SPACED = r"(?<![:\w])//[^\n]*"  # not the '//' of a URL
_DASH = r"--[^\n]*"
_SEMI = r";[^\n]*"
_DQ = r'"(?:[^"\\\n]|\\.)*(?:"|(?=\n)|\Z)'
_SQ = r"'(?:[^'\\\n]|\\.)*(?:'|(?=\n)|\Z)"
_BT = r"`(?:[^`\\]|\\[\s\S])*(?:`|\Z)"

_SYNTAX: dict[str, list[str]] = {
    "hash": [_TRIPLE, _HASH, _DQ, _SQ],
    "c": [_BLOCK, _SLASH, _DQ, _SQ, _BT],
    "c_hash": [_BLOCK, _SLASH, _HASH, _DQ, _SQ, _BT],
    "sql": [_BLOCK, _DASH, _DQ, _SQ],
    "lisp": [_SEMI, _DQ],
    "json": [_DQ],
    "generic": [_TRIPLE, _BLOCK, _HTML, _SLASH_SPACED, _HASH_SPACED, _DQ, _SQ, _BT],
}

_EXTENSIONS: dict[str, str] = {}
for _syntax, _exts in {
    "hash": "py pyi pyw pyx sh bash zsh fish ksh rb rake pl pm r jl nim cr ex exs coffee cmake "
    "mk makefile dockerfile containerfile gitignore dockerignore ps1 psm1 awk tcl",
    "c": "c h cc cpp cxx hpp hh hxx m mm java js jsx mjs cjs ts tsx mts cts go rs cs kt kts "
    "swift scala sc dart groovy gradle proto sol zig v d fs fsx css scss less vue svelte "
    "json5 jsonc",
    "c_hash": "php tf hcl tfvars",
    "sql": "sql lua hs elm ada",
    "lisp": "el lisp clj cljs cljc edn scm",
    "json": "json ipynb",
}.items():
    for _ext in _exts.split():
        _EXTENSIONS[_ext] = _syntax

# Files that are prose or key/value data: every line is analysed as prose.
_PROSE_EXTENSIONS = frozenset(
    "md markdown mdx txt text rst adoc asciidoc tex org html htm xml svg csv tsv log "
    "yaml yml toml ini cfg conf properties env".split()
)
_PROSE_NAMES = frozenset({"readme", "license", "changelog", "authors", "notice", "contributors"})

_COMPILED = {name: regex.compile("|".join(parts)) for name, parts in _SYNTAX.items()}


@dataclass(frozen=True)
class FileKind:
    """How a field's text is read: `prose` (all of it) or code of one comment syntax."""

    syntax: str  # "prose" or a key of _SYNTAX

    @property
    def is_prose(self) -> bool:
        return self.syntax == "prose"


PROSE = FileKind("prose")
GENERIC = FileKind("generic")


def kind_for_path(file_path: str | None) -> FileKind:
    """The file kind from a path's extension or name; unknown or missing: generic code."""
    if not file_path:
        return GENERIC
    name = file_path.replace("\\", "/").rsplit("/", 1)[-1].lower()
    if name.startswith(".env") or name in _PROSE_NAMES:
        return PROSE
    stem, dot, ext = name.rpartition(".")
    if not dot:
        ext = name  # Dockerfile, Makefile
    elif not stem:
        ext = name[1:]  # .gitignore
    if ext in _PROSE_EXTENSIONS:
        return PROSE
    syntax = _EXTENSIONS.get(ext)
    return FileKind(syntax) if syntax else GENERIC


def prose_spans(text: str, kind: FileKind) -> list[tuple[int, int]]:
    """(start, end) of comments and string literals in code; the whole text for prose.

    Payloads are windows on a file, so a text may start inside a docstring or a block
    comment. A leading `*/` closes a comment that began before the window; for triple
    quotes, whose opening and closing look alike, the reading whose triple-quoted parts
    look less like code wins.
    """
    if kind.is_prose:
        return [(0, len(text))] if text else []
    pattern = _COMPILED[kind.syntax]
    spans = _lex(pattern, text, 0)
    if kind.syntax in _BLOCK_SYNTAXES:
        close = text.find("*/")
        if close >= 0 and (text.find("/*") < 0 or close < text.find("/*")):
            spans = [(0, close + 2), *_lex(pattern, text, close + 2)]
    elif kind.syntax in _TRIPLE_SYNTAXES:
        first = _TRIPLE_QUOTE.search(text)
        if first:
            flipped = [(0, first.end()), *_lex(pattern, text, first.end())]
            if _code_density(text, flipped) < _code_density(text, spans):
                spans = flipped
    return spans


def _lex(pattern: regex.Pattern[str], text: str, pos: int) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text, pos) if m.end() > m.start()]


_BLOCK_SYNTAXES = frozenset({"c", "c_hash", "sql"})
_TRIPLE_SYNTAXES = frozenset({"hash", "generic"})
_TRIPLE_QUOTE = regex.compile(r'"""|\'\'\'')
_CODE_CHARS = regex.compile(r"[=()\[\]{}:;]")


def _code_density(text: str, spans: list[tuple[int, int]]) -> float:
    """Share of code punctuation in the triple-quoted spans (the ones that may be flipped)."""
    chars = code = 0
    for start, end in spans:
        if end - start >= 3 and (text.startswith(('"""', "'''"), start) or start == 0):
            chars += end - start
            code += len(_CODE_CHARS.findall(text, start, end))
    return code / chars if chars else 0.0


# A word that could be a name: capitalised, not glued to identifier characters, not a
# literal of common languages (None, True) and not CamelCase (ValueError).
_NAME_LIKE = regex.compile(
    r"(?<![\w.])(?!(?:None|True|False|Null|Self|TODO|FIXME|NOTE)\b)[A-Z][a-z]+(?![\w(])"
)
# Capitalised words that open most comment and docstring lines. A line whose only
# name-like words are these holds no name the NER model would find; skipping it keeps NER
# cost near the amount of real prose. Words that are also given names (Will, Mark, May,
# Grant, Bill, Rose) are deliberately absent.
COMMON_WORDS = frozenset(
    """a an the this that these those it its we our you your they their he she his her i
    if when while for in on at to of by with without from into as so but or and not no yes
    all any each every some only also otherwise else then now here there first next last
    finally because since why how what which who where whether do does don't please thanks
    is are was be been can could should would must might shall
    return returns get gets set sets create creates check checks make makes add adds remove
    removes update updates handle handles raise raises read reads write writes load loads
    parse parses convert converts build builds run runs start starts stop stops wait waits
    call calls use uses used find finds try tries ensure ensures allow allows initialize
    initializes compute computes calculate calculates validate validates test tests wrap wraps
    apply applies generate generates send sends receive receives open opens close closes
    acquire acquires release releases register registers reset resets clear clears copy
    copies move moves print prints format formats show shows enable enables disable disables
    skip skips define defines construct constructs represent represents contain contains
    note see todo fixme hack example examples args arguments parameters params param
    yields attributes usage warning warnings deprecated default defaults helper internal
    private public optional required type types value values key keys name names list dict
    string strings number numbers object objects class classes function functions method
    methods module modules file files path paths data error errors exception exceptions
    user users item items result results input output new old base main true false none
    null self license copyright version""".split()
)
_MAX_PIECE = 1000


def ner_pieces(text: str, spans: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Splits prose spans into line pieces worth running NER on.

    A piece without a name-like word is skipped: the small English models practically
    never tag a lower-case name, and skipping them keeps NER cost near the amount of real
    prose. Lines are cut at whitespace to at most _MAX_PIECE characters.
    """
    for start, end in spans:
        line_start = start
        while line_start < end:
            newline = text.find("\n", line_start, end)
            line_end = end if newline < 0 else newline
            yield from _line_pieces(text, line_start, line_end)
            line_start = line_end + 1


def _line_pieces(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    while start < end and text[start] in " \t\r":
        start += 1
    while end > start and text[end - 1] in " \t\r":
        end -= 1
    while end - start > _MAX_PIECE:
        cut = text.rfind(" ", start, start + _MAX_PIECE)
        if cut <= start:
            cut = start + _MAX_PIECE
        if _worth_ner(text, start, cut):
            yield start, cut
        start = cut
    if end > start and _worth_ner(text, start, end):
        yield start, end


def _worth_ner(text: str, start: int, end: int) -> bool:
    return any(m.group().lower() not in COMMON_WORDS for m in _NAME_LIKE.finditer(text, start, end))
