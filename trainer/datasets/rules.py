"""The signal rules (``policies/signals.yaml``): how feedback becomes labels, pairs and rewards.

Validated when loaded; a bad file is refused with every problem listed, never replaced by
defaults. The version is a hash of the canonical (parsed, defaults filled) content, so comments
and layout do not change it, and any change of meaning does. Every dataset card carries it.

The reward formula is a small arithmetic expression over ``accepted`` (0 or 1), ``fraction``
(the accepted share of a partial accept, 1 otherwise) and ``survival`` (edit similarity at the
latest window); ``+ - * /``, numbers, parentheses, ``min(...)`` and ``max(...)``. It is
evaluated in SQL during builds and clamped to [0, 1].
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from feedback_store import MatchParams

from .errors import RulesInvalid

__all__ = [
    "REWARD_VARIABLES",
    "SignalRules",
    "default_rules_path",
    "load_rules",
    "parse_rules",
    "rules_json_schema",
]

REWARD_VARIABLES = ("accepted", "fraction", "survival")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SurvivalRules(_Model):
    """What happened to accepted code."""

    windows_s: list[float] = Field(
        default=[30, 120, 300, 600],
        min_length=1,
        description="Survival windows in seconds; evidence later than the longest is ignored, "
        "and a suggestion without evidence has no outcome until the longest has passed.",
    )
    keep_threshold: float = Field(
        0.67,
        ge=0.0,
        le=1.0,
        description="Edit similarity at or above which accepted text is 'mostly unchanged'.",
    )

    @field_validator("windows_s")
    @classmethod
    def _windows(cls, value: list[float]) -> list[float]:
        if any(w <= 0 for w in value):
            raise ValueError("windows must be positive")
        if value != sorted(set(value)):
            raise ValueError("windows must be distinct and ascending")
        return value


class VisibilityRules(_Model):
    """When a dismissal counts."""

    min_visible_ms: float = Field(
        750, ge=0, description="A dismissed suggestion counts once visible at least this long."
    )
    when_unknown: Literal["exclude", "visible"] = Field(
        "exclude",
        description="Dismissals whose visible time is unknown (no elapsed time, no event times "
        "from a client that reports them, no later request): exclude them or count them.",
    )


class InferenceRules(_Model):
    """Server-side inference from later requests (feedback_store.feedback_queries documents it)."""

    enabled: bool = Field(True, description="Infer survival and hand-written text at all.")
    without_telemetry: bool = Field(
        True,
        description="Also infer the outcome of suggestions from clients that never send events "
        "(kept text: inferred accept; other text: inferred dismissal).",
    )
    anchor_chars: int = Field(96, ge=8, le=4000, description="Exact left-anchor length.")
    min_anchor_chars: int = Field(
        12, ge=1, description="Non-whitespace characters an anchor needs to be trusted."
    )
    fuzzy_anchor_lines: int = Field(3, ge=1, le=20, description="Lines of the fuzzy anchor.")
    right_anchor_min_chars: int = Field(
        6, ge=1, description="Non-whitespace characters the right-anchor line needs."
    )
    moved_min_chars: int = Field(
        16, ge=1, description="Accepted text this long (non-whitespace) is also found if moved."
    )
    prefix_tail_chars: int = Field(
        512, ge=16, le=20000, description="Characters of the original prefix the matcher sees."
    )
    suffix_head_chars: int = Field(
        1000, ge=16, le=20000, description="Characters of the original suffix the matcher sees."
    )
    later_prefix_chars: int = Field(
        4000, ge=16, le=100000, description="Characters before a later cursor searched."
    )
    later_suffix_chars: int = Field(
        2000, ge=0, le=100000, description="Characters after a later cursor searched."
    )
    span_slack_chars: int = Field(
        400,
        ge=0,
        le=100000,
        description="How much longer than the suggestion (plus the rest of its line) the span "
        "that replaced it may be and still be observed complete.",
    )

    def match_params(self) -> MatchParams:
        return MatchParams(
            anchor_chars=self.anchor_chars,
            min_anchor_chars=self.min_anchor_chars,
            fuzzy_anchor_lines=self.fuzzy_anchor_lines,
            right_anchor_min_chars=self.right_anchor_min_chars,
            moved_min_chars=self.moved_min_chars,
            prefix_tail_chars=self.prefix_tail_chars,
            suffix_head_chars=self.suffix_head_chars,
            later_prefix_chars=self.later_prefix_chars,
            later_suffix_chars=self.later_suffix_chars,
            span_slack_chars=self.span_slack_chars,
        )


class RewardRules(_Model):
    """The reward of a suggestion with an outcome."""

    formula: str = Field(
        "accepted * fraction * (0.4 + 0.6 * survival)",
        min_length=1,
        max_length=500,
        description="Expression over accepted, fraction, survival; clamped to [0, 1].",
    )
    unobserved_survival: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="survival of accepted text with no later evidence after the longest window.",
    )

    @field_validator("formula")
    @classmethod
    def _formula(cls, value: str) -> str:
        check_formula(value)
        return value


class ExclusionRules(_Model):
    """Records never used."""

    opted_out_repos: list[str] = Field(
        default_factory=list,
        description="Repositories (owner/name, globs allowed, case-insensitive) left out.",
    )
    max_redacted_share: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="Suggestions whose stored text is more than this share placeholders "
        "(<EMAIL_1>, <LABEL:hash>) are left out.",
    )


class SplitRules(_Model):
    """Train/eval split by time."""

    eval_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of contexts, the latest ones, that go to eval."
    )
    purge_s: float = Field(
        600,
        ge=0,
        description="Train rows from a file with eval rows, this close before the cut, are "
        "dropped (no near-duplicate context on both sides of the cut).",
    )


class SignalRulesDocument(_Model):
    """The whole rules file."""

    schema_version: Literal[1] = Field(description="Format version of this file.")
    description: str = Field("", description="Free text for humans.")
    survival: SurvivalRules = Field(default_factory=SurvivalRules)
    visibility: VisibilityRules = Field(default_factory=VisibilityRules)
    inference: InferenceRules = Field(default_factory=InferenceRules)
    reward: RewardRules = Field(default_factory=RewardRules)
    exclusions: ExclusionRules = Field(default_factory=ExclusionRules)
    split: SplitRules = Field(default_factory=SplitRules)


@dataclass(frozen=True)
class SignalRules:
    """Validated rules. ``version`` is ``sha256:<16 hex>`` of the canonical content."""

    version: str
    source: str
    document: SignalRulesDocument

    @property
    def longest_window_s(self) -> float:
        return self.document.survival.windows_s[-1]

    def canonical(self) -> dict[str, Any]:
        return self.document.model_dump(mode="json")

    def reward_sql(self, accepted: str, fraction: str, survival: str) -> str:
        """The clamped reward as a SQL expression over three SQL expressions."""
        names = {"accepted": accepted, "fraction": fraction, "survival": survival}
        body = _to_sql(ast.parse(self.document.reward.formula, mode="eval").body, names)
        return f"least(1.0, greatest(0.0, ({body})::DOUBLE))"

    def reward(self, accepted: float, fraction: float, survival: float) -> float:
        """The clamped reward in Python (same formula)."""
        tree = ast.parse(self.document.reward.formula, mode="eval").body
        values = {"accepted": accepted, "fraction": fraction, "survival": survival}
        return min(1.0, max(0.0, _evaluate(tree, values)))


# -- the formula ------------------------------------------------------------------------------

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_CALLS = {"min": "least", "max": "greatest"}


def _check_node(node: ast.AST) -> None:
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        _check_node(node.left)
        _check_node(node.right)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check_node(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return
    elif isinstance(node, ast.Name):
        if node.id not in REWARD_VARIABLES:
            raise ValueError(f"unknown name {node.id!r}; use {', '.join(REWARD_VARIABLES)}")
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _CALLS
        and len(node.args) >= 2
        and not node.keywords
    ):
        for arg in node.args:
            _check_node(arg)
    else:
        raise ValueError(
            "only numbers, accepted/fraction/survival, + - * /, parentheses, min() and max()"
        )


def check_formula(text: str) -> None:
    """Raise ValueError unless the formula is allowed and finite over its variables' ranges."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not an expression: {exc.msg}") from exc
    _check_node(tree)
    for accepted, fraction, survival in product((0, 1), (0.0, 0.5, 1.0), (0.0, 0.5, 1.0)):
        values = {"accepted": accepted, "fraction": fraction, "survival": survival}
        try:
            result = _evaluate(tree, values)
        except ZeroDivisionError as exc:
            raise ValueError(f"divides by zero at {values}") from exc
        if not math.isfinite(result):
            raise ValueError(f"not finite at {values}")


def _evaluate(node: ast.AST, values: dict[str, float]) -> float:
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, values), _evaluate(node.right, values)
        op = type(node.op)
        if op is ast.Add:
            return left + right
        if op is ast.Sub:
            return left - right
        if op is ast.Mult:
            return left * right
        return left / right
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    args = [_evaluate(arg, values) for arg in node.args]
    return min(args) if node.func.id == "min" else max(args)


def _to_sql(node: ast.AST, names: dict[str, str]) -> str:
    if isinstance(node, ast.BinOp):
        op = _BINARY[type(node.op)]
        left, right = _to_sql(node.left, names), _to_sql(node.right, names)
        if op == "/":  # DuckDB's / is float division, as Python's
            return f"({left} / {right})"
        return f"({left} {op} {right})"
    if isinstance(node, ast.UnaryOp):
        sign = "-" if isinstance(node.op, ast.USub) else "+"
        return f"({sign}{_to_sql(node.operand, names)})"
    if isinstance(node, ast.Constant):
        return repr(float(node.value))
    if isinstance(node, ast.Name):
        return f"({names[node.id]})::DOUBLE"
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    args = ", ".join(_to_sql(arg, names) for arg in node.args)
    return f"{_CALLS[node.func.id]}({args})"


# -- loading ----------------------------------------------------------------------------------


def default_rules_path() -> Path:
    """The rules shipped with Gristmill."""
    import policies

    return Path(policies.__file__).parent / "signals.yaml"


def load_rules(path: Path | None = None) -> SignalRules:
    """Read and validate a rules file (default: the shipped one); RulesInvalid lists problems."""
    path = Path(path) if path is not None else default_rules_path()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesInvalid(
            f"cannot read signal rules {path}",
            [{"loc": "", "line": None, "msg": type(exc).__name__}],
        ) from exc
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "<string>") -> SignalRules:
    """Validate rules YAML text; RulesInvalid names every problem (field and line)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RulesInvalid(
            f"signal rules {source} are not valid YAML",
            [
                {
                    "loc": "",
                    "line": mark.line + 1 if mark is not None else None,
                    "msg": getattr(exc, "problem", None) or "invalid YAML",
                }
            ],
        ) from exc
    errors = _duplicate_keys(root)
    try:
        document = SignalRulesDocument.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            parts = [str(p) for p in err["loc"]]
            errors.append(
                {"loc": ".".join(parts), "line": _line_of(root, parts), "msg": err["msg"]}
            )
        raise RulesInvalid(f"signal rules {source} are invalid", errors) from exc
    if errors:
        raise RulesInvalid(f"signal rules {source} are invalid", errors)
    canonical = json.dumps(
        document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    version = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
    return SignalRules(version=version, source=source, document=document)


def rules_json_schema() -> dict[str, Any]:
    """The JSON Schema of the rules file (shipped as policies/signals.schema.json)."""
    schema = SignalRulesDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Gristmill signal rules"
    return schema


def _line_of(root: yaml.Node | None, parts: list[str]) -> int | None:
    if root is None:
        return None
    node: yaml.Node = root
    line = node.start_mark.line + 1
    for part in parts:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _duplicate_keys(root: yaml.Node | None) -> list[dict[str, Any]]:
    """PyYAML keeps the last of two equal keys silently; rules must not."""
    errors: list[dict[str, Any]] = []

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
