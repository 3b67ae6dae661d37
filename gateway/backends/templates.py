"""Prompt templates per model family: fill-in-the-middle, stop tokens, a fallback chat format.

Pure string functions shared by every backend (embedded transformers, OpenAI-compatible
upstream). The completion rendering is feedback_store.prompts', re-exported here, so that
serving and training render the same prompt for the same request.

Families and their FIM forms:

    qwen       <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>
    starcoder  <fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>
    codellama  <PRE> {prefix} <SUF>{suffix} <MID>
    plain      {prefix}                      (no FIM tokens; the suffix is ignored)

A FIM family keeps the FIM form when there is no suffix (None or ""): these models were
trained on FIM documents whose suffix is often empty, and switching to a bare prefix would
change the prompt distribution between requests that differ only in the cursor position.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

# The rendering itself lives in feedback_store.prompts, so that dataset builds (which may not
# import the gateway) render training prompts exactly as serving does.
from feedback_store import FIM_FORMS, PromptFamily, render_completion, template_name
from feedback_store import PROMPT_FAMILIES as FAMILIES

__all__ = [
    "CHAT_FALLBACK_STOP",
    "FAMILIES",
    "PromptFamily",
    "detect_family",
    "render_chat_fallback",
    "render_completion",
    "split_fim",
    "stop_tokens",
    "template_name",
]

# Tokens after which the model has left the middle it was asked to fill: end of document,
# FIM padding, or the start of another file/FIM segment. Only the ones that exist as single
# tokens in a tokenizer's vocabulary matter; backends look them up.
_STOP_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen": (
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|file_sep|>",
        "<|repo_name|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|im_start|>",
        "<|im_end|>",
    ),
    "starcoder": (
        "<|endoftext|>",
        "<fim_pad>",
        "<file_sep>",
        "<repo_name>",
        "<filename>",
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
    ),
    "codellama": ("<EOT>", "</s>"),
    "plain": (),
}

# Stop strings for the fallback chat transcript: the model starting the next turn itself.
CHAT_FALLBACK_STOP: tuple[str, ...] = ("\nUser:", "\nSystem:")


class ChatMessageLike(Protocol):
    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def _check(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown prompt family {family!r}; expected one of {', '.join(FAMILIES)}")


def detect_family(special_tokens: Iterable[str]) -> str:
    """The family whose FIM tokens a tokenizer has (vocabulary or added tokens), else "plain".

    SentencePiece vocabularies (Code Llama) spell the FIM tokens with a leading "▁".
    """
    tokens = set(special_tokens)
    if "<|fim_prefix|>" in tokens and "<|fim_middle|>" in tokens:
        return "qwen"
    if "<fim_prefix>" in tokens and "<fim_middle>" in tokens:
        return "starcoder"
    if all(t in tokens or f"▁{t}" in tokens for t in ("<PRE>", "<SUF>", "<MID>")):
        return "codellama"
    return "plain"


def stop_tokens(family: str) -> tuple[str, ...]:
    """Special tokens that end a completion for this family (besides the tokenizer's EOS)."""
    _check(family)
    return _STOP_TOKENS[family]


def render_chat_fallback(messages: Iterable[ChatMessageLike]) -> str:
    """A plain transcript for tokenizers without a chat template, ending with "Assistant:".

    Pair it with CHAT_FALLBACK_STOP so the model does not write the user's next turn.
    """
    turns = [f"{m.role.strip().capitalize()}: {m.content}" for m in messages]
    turns.append("Assistant:")
    return "\n\n".join(turns)


def split_fim(prompt: str) -> tuple[str, str] | None:
    """Recovers (prefix, suffix) from a prompt a client already rendered in a FIM form.

    Continue's OpenAI-style providers render the FIM prompt themselves and send no suffix;
    rendering it again would nest templates and store FIM tokens as code.
    """
    for before, middle, after in FIM_FORMS.values():
        if prompt.startswith(before) and prompt.endswith(after) and middle in prompt:
            body = prompt[len(before) : len(prompt) - len(after)]
            prefix, _, suffix = body.partition(middle)
            return prefix, suffix
    return None
