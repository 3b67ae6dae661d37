"""Completion prompt templates: the one rendering shared by serving and training.

The gateway's backends render a completion prompt from (prefix, suffix) with a family's
template and record the template's versioned name with each suggestion; dataset builds render
the same stored prefix and suffix with the same template, so a training prompt is exactly the
prompt the serving backend used. Pure string functions, plus the same rendering as a DuckDB SQL
expression for builds that render millions of prompts.

Families and their forms:

    qwen       <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>
    starcoder  <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>
    codellama  <PRE> {prefix} <SUF>{suffix} <MID>
    plain      {prefix}                      (no FIM tokens; the suffix is ignored)

A FIM family keeps the FIM form when there is no suffix (None or ""): these models were
trained on FIM documents whose suffix is often empty, and switching to a bare prefix would
change the prompt distribution between requests that differ only in the cursor position.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "FAMILIES",
    "PROMPT_FAMILIES",
    "FIM_FORMS",
    "TEMPLATE_FAMILIES",
    "PromptFamily",
    "render_completion",
    "render_template",
    "render_template_sql",
    "template_name",
]

PromptFamily = Literal["qwen", "starcoder", "codellama", "plain"]
FAMILIES: tuple[str, ...] = get_args(PromptFamily)
PROMPT_FAMILIES = FAMILIES

FIM_FORMS: dict[str, tuple[str, str, str]] = {
    # family: (before prefix, between prefix and suffix, after suffix)
    "qwen": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    "starcoder": ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    "codellama": ("<PRE> ", " <SUF>", " <MID>"),
}

# Bump a family's version whenever its rendering changes: the name is stored with every
# suggestion, and training must not mix prompts rendered two different ways.
_TEMPLATE_NAMES: dict[str, str] = {
    "qwen": "qwen-fim-v1",
    "starcoder": "starcoder-fim-v1",
    "codellama": "codellama-fim-v1",
    "plain": "plain-v1",
}

TEMPLATE_FAMILIES: dict[str, str] = {name: family for family, name in _TEMPLATE_NAMES.items()}


def _check(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown prompt family {family!r}; expected one of {', '.join(FAMILIES)}")


def render_completion(family: str, prefix: str, suffix: str | None) -> str:
    """The prompt text for a completion at the cursor between prefix and suffix."""
    _check(family)
    if family == "plain":
        return prefix
    before, middle, after = FIM_FORMS[family]
    return f"{before}{prefix}{middle}{suffix or ''}{after}"


def template_name(family: str) -> str:
    """A stable, versioned name of the completion template, recorded with each suggestion."""
    _check(family)
    return _TEMPLATE_NAMES[family]


def render_template(name: str, prefix: str, suffix: str | None) -> str:
    """Render with a recorded template name (``qwen-fim-v1`` ...); ValueError if unknown."""
    family = TEMPLATE_FAMILIES.get(name)
    if family is None:
        raise ValueError(f"unknown prompt template {name!r}")
    return render_completion(family, prefix, suffix)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def render_template_sql(template: str, prefix: str, suffix: str) -> str:
    """A DuckDB expression equal to render_template over three SQL expressions (NULL when the
    template name is unknown)."""
    cases = []
    for name, family in TEMPLATE_FAMILIES.items():
        if family == "plain":
            rendered = f"({prefix})"
        else:
            before, middle, after = (_sql_literal(part) for part in FIM_FORMS[family])
            # One concat, not a chain of ||, which copies each partial string again (2x the
            # cost); NULL stays NULL, as with ||.
            rendered = (
                f"(CASE WHEN ({prefix}) IS NOT NULL THEN concat({before}, {prefix}, {middle}, "
                f"coalesce({suffix}, ''), {after}) END)"
            )
        cases.append(f"WHEN {_sql_literal(name)} THEN {rendered}")
    return f"(CASE {template} {' '.join(cases)} END)"
