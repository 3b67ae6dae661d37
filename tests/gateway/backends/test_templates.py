"""Prompt templates: pure string functions shared by every backend."""

from __future__ import annotations

import pytest

from gateway.backends.base import ChatMessage
from gateway.backends.templates import (
    CHAT_FALLBACK_STOP,
    FAMILIES,
    detect_family,
    render_chat_fallback,
    render_completion,
    stop_tokens,
    template_name,
)


@pytest.mark.parametrize(
    ("family", "suffix", "expected"),
    [
        # Qwen2.5-Coder FIM tokens
        ("qwen", "\nreturn x", "<|fim_prefix|>def f(x):<|fim_suffix|>\nreturn x<|fim_middle|>"),
        # StarCoder / StarCoder2 FIM tokens, no pipes
        ("starcoder", "\nreturn x", "<fim_prefix>def f(x):<fim_suffix>\nreturn x<fim_middle>"),
        # Code Llama: the spaces around the sentinels are part of the trained format
        ("codellama", "\nreturn x", "<PRE> def f(x): <SUF>\nreturn x <MID>"),
        # plain models continue the prefix; the suffix cannot be used
        ("plain", "\nreturn x", "def f(x):"),
        # no suffix: FIM families keep the FIM form with an empty suffix
        ("qwen", None, "<|fim_prefix|>def f(x):<|fim_suffix|><|fim_middle|>"),
        ("starcoder", "", "<fim_prefix>def f(x):<fim_suffix><fim_middle>"),
        ("codellama", None, "<PRE> def f(x): <SUF> <MID>"),
        ("plain", None, "def f(x):"),
    ],
)
def test_when_rendering_a_completion_then_each_family_uses_its_fim_form(
    family: str, suffix: str | None, expected: str
) -> None:
    assert render_completion(family, "def f(x):", suffix) == expected


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        # Qwen2.5-Coder added tokens
        (["<|endoftext|>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"], "qwen"),
        # StarCoder vocabulary
        (
            ["<|endoftext|>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>"],
            "starcoder",
        ),
        # Code Llama's SentencePiece spells the sentinels with a leading ▁
        (["<s>", "</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"], "codellama"),
        # the same sentinels without ▁ (a converted tokenizer)
        (["<PRE>", "<SUF>", "<MID>"], "codellama"),
        # GPT-2 style vocabulary without FIM tokens
        (["<|endoftext|>", "def", "Ġreturn"], "plain"),
        # only half of a FIM set is not enough to use it
        (["<|fim_prefix|>", "<|endoftext|>"], "plain"),
        ([], "plain"),
    ],
)
def test_when_detecting_then_the_fim_tokens_decide_the_family(
    tokens: list[str], expected: str
) -> None:
    assert detect_family(iter(tokens)) == expected


def test_when_family_is_unknown_then_value_error_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="qwen"):
        render_completion("auto", "x", None)
    with pytest.raises(ValueError, match="unknown prompt family"):
        template_name("gpt")
    with pytest.raises(ValueError, match="unknown prompt family"):
        stop_tokens("")


def test_when_naming_templates_then_each_family_has_a_distinct_versioned_name() -> None:
    names = [template_name(f) for f in FAMILIES]
    assert len(set(names)) == len(FAMILIES)
    for family, name in zip(FAMILIES, names, strict=True):
        assert name.startswith(family) and "-v" in name


@pytest.mark.parametrize(
    ("family", "must_stop_at"),
    [
        # end of document, FIM padding and the start of the next file
        ("qwen", {"<|endoftext|>", "<|fim_pad|>", "<|file_sep|>"}),
        ("starcoder", {"<|endoftext|>", "<fim_pad>", "<file_sep>"}),
        # Code Llama ends an infill with <EOT>
        ("codellama", {"<EOT>", "</s>"}),
    ],
)
def test_when_asking_stop_tokens_then_fim_families_end_at_document_and_padding_tokens(
    family: str, must_stop_at: set[str]
) -> None:
    assert must_stop_at <= set(stop_tokens(family))


def test_when_family_is_plain_then_it_adds_no_stop_tokens() -> None:
    assert stop_tokens("plain") == ()


def test_when_rendering_chat_without_a_template_then_transcript_ends_with_assistant_turn() -> None:
    messages = [
        ChatMessage("system", "Answer in one line."),
        ChatMessage("user", "What does len() do?"),
        ChatMessage("assistant", "Counts items."),
        ChatMessage("user", "And sum()?"),
    ]
    assert render_chat_fallback(messages) == (
        "System: Answer in one line.\n\n"
        "User: What does len() do?\n\n"
        "Assistant: Counts items.\n\n"
        "User: And sum()?\n\n"
        "Assistant:"
    )
    # the stop strings catch the model writing the next user or system turn itself
    assert all(stop.startswith("\n") for stop in CHAT_FALLBACK_STOP)
    assert "\nUser:" in CHAT_FALLBACK_STOP
