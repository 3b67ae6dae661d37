"""The model-backend interface. Routers speak only this; backends are chosen by name.

A backend renders the prompt itself (it knows its tokenizer and FIM template) and returns
the exact prompt text it used, because training data must use the same prompt as serving.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import BackendUnavailable

FinishReason = Literal["stop", "length"]


@dataclass(slots=True)
class CompletionRequest:
    """A code completion: text before the cursor, optional text after it (fill-in-the-middle)."""

    prefix: str
    suffix: str | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    model: str | None = None  # a registry version / adapter name; None = the active model


@dataclass(slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(slots=True)
class ChatRequest:
    messages: list[ChatMessage]
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    model: str | None = None


@dataclass(slots=True)
class Choice:
    index: int
    text: str
    finish_reason: FinishReason


@dataclass(slots=True)
class CompletionResult:
    choices: list[Choice]
    model_version: str
    rendered_prompt: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class StreamDelta:
    """One piece of a streamed choice; the last piece of a choice carries finish_reason."""

    index: int
    text: str
    finish_reason: FinishReason | None = None


class ModelBackend(ABC):
    """Serves completions. Implementations must never block the event loop.

    Adapters (LoRA model versions from the registry) are served next to the base model:
    ``load_adapter(name, path)`` makes ``name`` selectable with ``request.model = name``
    (``None`` selects the base), ``unload_adapter(name)`` drops it, and every result records
    ``version_of(request.model)``: ``<model_version>+<name>``, e.g. ``gristmill-base@ab12+v3``.
    """

    name: str  # registry name, e.g. "embedded"
    supports_adapters: bool = False

    def version_of(self, adapter: str | None) -> str:
        """The model version recorded for a request served by ``adapter`` (None: the base)."""
        base = self.model_version
        return base if adapter is None else f"{base}+{adapter}"

    def adapters(self) -> list[str]:
        """Names of the adapters loaded now."""
        return []

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a PEFT LoRA adapter directory as ``name`` without a restart (idempotent).
        Backends without adapter support (``supports_adapters`` False) refuse."""
        raise BackendUnavailable(f"the {self.name} backend cannot serve LoRA adapters")

    async def unload_adapter(self, name: str) -> None:
        """Drop adapter ``name``; requests naming it afterwards fail (idempotent)."""
        raise BackendUnavailable(f"the {self.name} backend cannot serve LoRA adapters")

    @property
    @abstractmethod
    def model_version(self) -> str:
        """The version recorded with every suggestion (e.g. model name + content hash)."""

    @property
    @abstractmethod
    def template_name(self) -> str:
        """The versioned completion-template name recorded with every suggestion."""

    @abstractmethod
    async def start(self) -> None:
        """Load weights / open pooled connections. Called once by the app lifespan."""

    @abstractmethod
    async def close(self) -> None:
        """Release everything start() acquired."""

    @abstractmethod
    async def complete(self, request: CompletionRequest) -> CompletionResult: ...

    @abstractmethod
    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta]:
        """Stream deltas; the caller learns the rendered prompt from render_completion_prompt."""

    @abstractmethod
    async def chat(self, request: ChatRequest) -> CompletionResult: ...

    @abstractmethod
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[StreamDelta]: ...

    @abstractmethod
    def render_completion_prompt(self, request: CompletionRequest) -> str:
        """The exact prompt text the backend sends to the model for this request."""

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """Facts for health endpoints: device, arch, cpu_info, cuda_devices, model."""
