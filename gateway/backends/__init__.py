"""Model backends behind one interface, chosen by name in settings."""

from __future__ import annotations

from collections.abc import Callable

from gateway.backends.base import (
    ChatMessage,
    ChatRequest,
    Choice,
    CompletionRequest,
    CompletionResult,
    ModelBackend,
    StreamDelta,
)
from gateway.settings import Settings

__all__ = [
    "BACKENDS",
    "ChatMessage",
    "ChatRequest",
    "Choice",
    "CompletionRequest",
    "CompletionResult",
    "ModelBackend",
    "StreamDelta",
    "build_backend",
]


def _embedded(settings: Settings) -> ModelBackend:
    from gateway.backends.embedded import EmbeddedBackend

    assert settings.model_dir is not None
    return EmbeddedBackend(
        settings.model_dir,
        model_name=settings.model_name,
        prompt_family=settings.prompt_family,
        device=settings.device,
        max_context_tokens=settings.max_context_tokens,
        repetition_penalty=settings.repetition_penalty,
        torch_threads=settings.torch_threads,
    )


def _upstream(settings: Settings) -> ModelBackend:
    from gateway.backends.upstream import OpenAIUpstreamBackend

    assert settings.upstream_url is not None
    key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    return OpenAIUpstreamBackend(
        settings.upstream_url,
        model_name=settings.model_name,
        upstream_model=settings.upstream_model,
        api_key=key,
        prompt_family=settings.prompt_family,
        timeout_s=settings.upstream_timeout_s,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        max_connections=settings.upstream_max_connections,
    )


BACKENDS: dict[str, Callable[[Settings], ModelBackend]] = {
    "embedded": _embedded,
    "openai_upstream": _upstream,
}


def build_backend(settings: Settings) -> ModelBackend:
    return BACKENDS[settings.backend](settings)
