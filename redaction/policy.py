"""The redaction policy: YAML model, validation with line numbers, version, path and repo rules.

A bad policy is refused with every problem listed (`PolicyError.errors`), never replaced by
defaults. The version is a hash of the canonical (parsed, defaults filled) content, so
comments and formatting do not change it, and any change of meaning does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import regex
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from redaction.entities import CATALOGUE
from redaction.errors import FieldError, PolicyError

SCHEMA_VERSION = 1
_NAME = r"^[a-z][a-z0-9_]{0,63}$"
_ENTITY = r"^[A-Z][A-Z0-9_]{0,63}$"
_OVERRIDE_NAME = r"^[a-z][a-z0-9_-]{0,63}$"

Action = Literal["replace", "mask", "hash", "drop_record"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EntityRule(_Model):
    """What to do with one entity type."""

    action: Action = Field(
        "replace",
        description="replace: typed placeholder stable within a record (<EMAIL_1>); "
        "mask: every character becomes masking_char; hash: <LABEL:keyed HMAC prefix>; "
        "drop_record: the whole record is not stored.",
    )
    threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Findings scoring below this are ignored."
    )
    masking_char: str = Field(
        "*", min_length=1, max_length=1, description="Character used by action mask."
    )


class PatternSpec(_Model):
    """One regular expression of a custom recognizer."""

    name: str = Field(pattern=_NAME, description="Name shown in explanations.")
    regex: str = Field(min_length=1, description="Regular expression (Python `regex` syntax).")
    score: float = Field(0.8, gt=0.0, le=1.0, description="Score of a match.")
    ignore_case: bool = Field(False, description="Match case-insensitively.")


class CustomRecognizer(_Model):
    """A recognizer the security team adds without code: regexes and/or literal deny list."""

    name: str = Field(pattern=_NAME, description="Unique recognizer name.")
    entity: str = Field(pattern=_ENTITY, description="Entity type it finds (UPPER_SNAKE).")
    patterns: list[PatternSpec] = Field(default_factory=list, description="Regexes.")
    deny_list: list[str] = Field(
        default_factory=list, description="Literal values always treated as this entity."
    )
    context: list[str] = Field(
        default_factory=list,
        description="Words that raise the score (+0.35) when found shortly before a match.",
    )

    @model_validator(mode="after")
    def _needs_something(self) -> CustomRecognizer:
        if not self.patterns and not self.deny_list:
            raise ValueError("a custom recognizer needs patterns or a deny_list")
        if any(not item for item in self.deny_list):
            raise ValueError("deny_list entries must not be empty")
        return self


class AllowList(_Model):
    """Values that are never redacted, whatever recognizer finds them."""

    literals: list[str] = Field(default_factory=list, description="Exact values.")
    regexes: list[str] = Field(
        default_factory=list, description="Regexes; a finding matching one in full is kept."
    )


class PathRule(_Model):
    """A rule on the record's file path. Globs: `*`, `?`, `**`; no slash = any directory."""

    glob: str = Field(min_length=1, description="Path glob, e.g. **/.env, **/secrets/**, *.pem.")
    action: Literal["drop_record"] = Field("drop_record", description="What happens on a match.")


class OverrideMatch(_Model):
    """Which records an override applies to: every listed criterion must match."""

    tenants: list[str] = Field(
        default_factory=list, description="Tenant names; empty means any tenant."
    )
    repos: list[str] = Field(
        default_factory=list,
        description="Repositories (owner/name, globs allowed, e.g. acme/*); empty means any.",
    )

    @model_validator(mode="after")
    def _needs_something(self) -> OverrideMatch:
        if not self.tenants and not self.repos:
            raise ValueError("an override must match tenants, repos or both")
        if any(not item.strip() for item in [*self.tenants, *self.repos]):
            raise ValueError("tenant and repo entries must not be empty")
        return self


class Override(_Model):
    """Changes for some tenants or repositories, merged over the base policy at redact time.

    `entities` replace or add rules by entity name; `remove_entities` stops acting on
    entities for these records; lists (allow, custom recognizers, path rules) are appended.
    Several matching overrides apply in file order.
    """

    name: str = Field(
        pattern=_OVERRIDE_NAME, description="Unique override name (shown in dry runs)."
    )
    match: OverrideMatch = Field(description="Tenants and/or repositories this applies to.")
    entities: dict[str, EntityRule] = Field(
        default_factory=dict, description="Entity rules added or replaced for these records."
    )
    remove_entities: list[str] = Field(
        default_factory=list, description="Entities of the base policy not acted on here."
    )
    allow: AllowList = Field(default_factory=AllowList, description="Extra allow list.")
    custom_recognizers: list[CustomRecognizer] = Field(
        default_factory=list, description="Extra recognizers for these records."
    )
    path_rules: list[PathRule] = Field(default_factory=list, description="Extra path rules.")

    def applies(self, tenant: str | None, repo: str | None) -> bool:
        if self.match.tenants and (tenant or "") not in self.match.tenants:
            return False
        if self.match.repos:
            name = (repo or "").strip().lower()
            if not name or not any(
                fnmatch.fnmatchcase(name, pattern.strip().lower()) for pattern in self.match.repos
            ):
                return False
        return True


class PolicyDocument(_Model):
    """The whole policy file."""

    schema_version: Literal[1] = Field(description="Format version of this file.")
    description: str = Field("", description="Free text for humans.")
    entities: dict[str, EntityRule] = Field(
        description="Entity types to act on, each with its rule. Unlisted types are kept."
    )
    allow: AllowList = Field(default_factory=AllowList, description="Allow list.")
    custom_recognizers: list[CustomRecognizer] = Field(
        default_factory=list, description="Extra recognizers defined in the policy."
    )
    path_rules: list[PathRule] = Field(
        default_factory=list, description="Rules on the record's file path."
    )
    opt_out_repos: list[str] = Field(
        default_factory=list,
        description="Repositories (owner/name, globs allowed) whose records are never stored.",
    )
    prose_fields: list[str] = Field(
        default_factory=list,
        description="Record fields that hold prose, not code: NER runs on all of their text.",
    )
    overrides: list[Override] = Field(
        default_factory=list,
        description="Per-tenant and per-repository changes merged over this base policy.",
    )

    def merged(self, indices: tuple[int, ...]) -> PolicyDocument:
        """The base document with the given overrides applied in order (no overrides left)."""
        entities = dict(self.entities)
        literals, regexes = list(self.allow.literals), list(self.allow.regexes)
        recognizers, path_rules = list(self.custom_recognizers), list(self.path_rules)
        for index in indices:
            override = self.overrides[index]
            for name in override.remove_entities:
                entities.pop(name, None)
            entities.update(override.entities)
            literals.extend(override.allow.literals)
            regexes.extend(override.allow.regexes)
            recognizers.extend(override.custom_recognizers)
            path_rules.extend(override.path_rules)
        recognizers = [r for r in recognizers if r.entity in entities]
        return self.model_copy(
            update={
                "entities": entities,
                "allow": AllowList(literals=literals, regexes=regexes),
                "custom_recognizers": recognizers,
                "path_rules": path_rules,
                "overrides": [],
            }
        )


@dataclass(frozen=True)
class RedactionPolicy:
    """A validated policy. `version` is `sha256:<16 hex>` of the canonical content."""

    version: str
    text: str
    source: str
    document: PolicyDocument

    def drops_path(self, file_path: str | None) -> bool:
        """True when a path rule says records from this file are not stored."""
        if not file_path:
            return False
        normalized = _normalize_path(file_path)
        return any(pattern.fullmatch(normalized) for pattern in self._path_patterns)

    @cached_property
    def _path_patterns(self) -> list[regex.Pattern[str]]:
        return [glob_regex(rule.glob) for rule in self.document.path_rules]

    def matching_overrides(self, tenant: str | None, repo: str | None) -> tuple[int, ...]:
        """Indices of the overrides that apply to a record of this tenant and repository."""
        return tuple(i for i, o in enumerate(self.document.overrides) if o.applies(tenant, repo))

    def with_overrides(self, indices: tuple[int, ...]) -> RedactionPolicy:
        """The effective policy for records matching these overrides. It keeps the version
        of the whole file: a record's version names the file that redacted it."""
        if not indices:
            return self
        names = ",".join(self.document.overrides[i].name for i in indices)
        return RedactionPolicy(
            version=self.version,
            text=self.text,
            source=f"{self.source}#overrides[{names}]",
            document=self.document.merged(indices),
        )

    def opted_out(self, repo: str | None) -> bool:
        """True when the repository is on the opt-out list."""
        if not repo:
            return False
        name = repo.strip().lower()
        return any(
            fnmatch.fnmatchcase(name, pattern.strip().lower())
            for pattern in self.document.opt_out_repos
        )


def load_policy(path: Path) -> RedactionPolicy:
    """Reads and validates a policy file; raises PolicyError naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(
            f"cannot read policy {path}", [{"loc": "", "line": None, "msg": type(exc).__name__}]
        ) from exc
    return parse_policy(text, source=str(path))


def parse_policy(text: str, source: str = "<string>") -> RedactionPolicy:
    """Validates policy YAML text; raises PolicyError naming every problem (field and line)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PolicyError(
            f"policy {source} is not valid YAML", [{"loc": "", "line": line, "msg": problem}]
        ) from exc
    errors: list[FieldError] = _duplicate_keys(root)
    try:
        document = PolicyDocument.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            parts = [str(p) for p in err["loc"]]
            errors.append(
                {"loc": ".".join(parts), "line": _line_of(root, parts), "msg": err["msg"]}
            )
        raise PolicyError(f"policy {source} is invalid", errors) from exc
    errors.extend(_semantic_errors(document, root))
    if errors:
        raise PolicyError(f"policy {source} is invalid", errors)
    return RedactionPolicy(
        version=policy_version(document), text=text, source=source, document=document
    )


def policy_version(document: PolicyDocument) -> str:
    """`sha256:<16 hex>` of the canonical JSON form of the document."""
    canonical = json.dumps(
        document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file (shipped as policies/redaction.schema.json)."""
    schema = PolicyDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Gristmill redaction policy"
    return schema


# --- semantic checks -------------------------------------------------------------------


def _semantic_errors(doc: PolicyDocument, root: yaml.Node | None) -> list[FieldError]:
    errors: list[FieldError] = []

    def add(parts: list[str], msg: str) -> None:
        errors.append({"loc": ".".join(parts), "line": _line_of(root, parts), "msg": msg})

    base_custom = _check_recognizers(doc.custom_recognizers, ["custom_recognizers"], set(), add)
    _check_entities(doc.entities, base_custom, ["entities"], add)
    for rec_index, rec in enumerate(doc.custom_recognizers):
        if rec.entity not in doc.entities:
            add(
                ["custom_recognizers", str(rec_index), "entity"],
                f"entity '{rec.entity}' has no rule under entities",
            )
    _check_allow_and_paths(doc.allow, doc.path_rules, [], add)
    seen_overrides: set[str] = set()
    for i, override in enumerate(doc.overrides):
        base = ["overrides", str(i)]
        if override.name in seen_overrides:
            add([*base, "name"], f"duplicate override name '{override.name}'")
        seen_overrides.add(override.name)
        names = {r.name for r in doc.custom_recognizers}
        custom = base_custom | _check_recognizers(
            override.custom_recognizers, [*base, "custom_recognizers"], names, add
        )
        _check_entities(override.entities, custom, [*base, "entities"], add)
        for j, name in enumerate(override.remove_entities):
            if name not in doc.entities:
                add(
                    [*base, "remove_entities", str(j)],
                    f"'{name}' is not an entity of the base policy",
                )
            elif name in override.entities:
                add(
                    [*base, "remove_entities", str(j)],
                    f"'{name}' is both removed and given a rule in this override",
                )
        effective = (set(doc.entities) - set(override.remove_entities)) | set(override.entities)
        for rec_index, rec in enumerate(override.custom_recognizers):
            if rec.entity not in effective:
                add(
                    [*base, "custom_recognizers", str(rec_index), "entity"],
                    f"entity '{rec.entity}' has no rule under entities",
                )
        _check_allow_and_paths(override.allow, override.path_rules, base, add)
    return errors


def _check_recognizers(
    recognizers: list[CustomRecognizer],
    where: list[str],
    taken_names: set[str],
    add: Callable[[list[str], str], None],
) -> set[str]:
    """Checks custom recognizers; returns the entity names they define."""
    entities: set[str] = set()
    seen = set(taken_names)
    for i, rec in enumerate(recognizers):
        base = [*where, str(i)]
        if rec.name in seen:
            add([*base, "name"], f"duplicate recognizer name '{rec.name}'")
        seen.add(rec.name)
        if rec.entity in CATALOGUE:
            add([*base, "entity"], f"'{rec.entity}' is a built-in entity; pick another name")
        entities.add(rec.entity)
        for j, pattern in enumerate(rec.patterns):
            problem = regex_problem(pattern.regex)
            if problem:
                add([*base, "patterns", str(j), "regex"], problem)
    return entities


def _check_entities(
    entities: dict[str, EntityRule],
    custom: set[str],
    where: list[str],
    add: Callable[[list[str], str], None],
) -> None:
    for name in entities:
        if name not in CATALOGUE and name not in custom:
            add(
                [*where, name],
                f"unknown entity '{name}'; known: {', '.join(sorted(CATALOGUE))} "
                "or an entity of a custom recognizer",
            )


def _check_allow_and_paths(
    allow: AllowList,
    path_rules: list[PathRule],
    where: list[str],
    add: Callable[[list[str], str], None],
) -> None:
    for j, pattern_text in enumerate(allow.regexes):
        problem = regex_problem(pattern_text)
        if problem:
            add([*where, "allow", "regexes", str(j)], problem)
    for j, rule in enumerate(path_rules):
        if "\\" in rule.glob:
            add([*where, "path_rules", str(j), "glob"], "use forward slashes in path globs")


def regex_problem(pattern: str) -> str | None:
    """Why a policy regex is refused (does not compile, may backtrack badly), or None."""
    try:
        regex.compile(pattern)
    except regex.error as exc:
        return f"bad regex: {exc}"
    if _has_nested_quantifier(pattern):
        return (
            "regex may backtrack catastrophically (a repeated group contains a repeat, "
            "e.g. (a+)+); rewrite it without nested repetition"
        )
    return None


def _has_nested_quantifier(pattern: str) -> bool:
    """True for a group that repeats without bound and itself holds an unbounded repeat."""
    stack: list[bool] = [False]  # per open group: does it contain an unbounded repeat?
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i = _skip_class(pattern, i)
            continue
        if ch == "(":
            stack.append(False)
        elif ch == ")" and len(stack) > 1:
            inner = stack.pop()
            unbounded, length = _unbounded_quantifier(pattern, i + 1)
            if unbounded and inner:
                return True
            if inner or unbounded:
                stack[-1] = True
            i += 1 + length
            continue
        else:
            unbounded, length = _unbounded_quantifier(pattern, i)
            if unbounded and i > 0:
                stack[-1] = True
                i += length
                continue
        i += 1
    return False


def _skip_class(pattern: str, i: int) -> int:
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


_QUANT = regex.compile(r"\*|\+|\{(\d*),(\d*)\}")


def _unbounded_quantifier(pattern: str, i: int) -> tuple[bool, int]:
    match = _QUANT.match(pattern, i)
    if not match:
        return False, 0
    if match.group(0) in ("*", "+"):
        return True, len(match.group(0))
    upper = match.group(2)
    return upper == "" or int(upper) > 16, len(match.group(0))


# --- YAML positions ----------------------------------------------------------------------


def _line_of(root: yaml.Node | None, parts: list[str]) -> int | None:
    """1-based line of the deepest node on `parts` that exists (keys: the key's line)."""
    if root is None:
        return None
    node: yaml.Node = root
    line = node.start_mark.line + 1
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    line = key.start_mark.line + 1
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _duplicate_keys(root: yaml.Node | None) -> list[FieldError]:
    """PyYAML keeps the last of two equal keys silently; a policy must not."""
    errors: list[FieldError] = []

    def walk(node: yaml.Node, path: list[str]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                name = str(key.value)
                if name in seen:
                    errors.append(
                        {
                            "loc": ".".join([*path, name]),
                            "line": key.start_mark.line + 1,
                            "msg": f"duplicate key '{name}'",
                        }
                    )
                seen.add(name)
                walk(value, [*path, name])
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, [*path, str(index)])

    if root is not None:
        walk(root, [])
    return errors


# --- paths -------------------------------------------------------------------------------


def _normalize_path(path: str) -> str:
    normalized = path.replace("\\", "/")
    while normalized.startswith("./"):
        normalized = normalized[2:]
    return normalized.lstrip("/")


def glob_regex(glob: str) -> regex.Pattern[str]:
    """Translates a path glob: `**/` any directories, `*` and `?` within one segment.
    A glob without a slash matches the file name in any directory (like .gitignore)."""
    pattern = glob.lstrip("/")
    if "/" not in pattern:
        pattern = "**/" + pattern
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(regex.escape(pattern[i]))
            i += 1
    return regex.compile("".join(out), regex.IGNORECASE | regex.DOTALL)
