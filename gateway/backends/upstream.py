"""OpenAI-compatible upstream (vLLM, llama.cpp server, any /v1/completions server).

One pooled keep-alive connection pool for the life of the process (`_http.HTTPPool`): the
serving notes measured httpx's pool at ~1-2 ms CPU per request and aiohttp's at ~0.2 ms;
the lean pool costs less again (bench/completion_overhead.py).
The gateway renders the FIM prompt itself (vLLM does not accept `suffix`).

Adapters (registry versions) are vLLM LoRA adapters loaded at run time (vLLM started with
`--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`): `load_adapter("v3", path)` posts
`{"lora_name": "<model_name>-v3", "lora_path": path}` to `/v1/load_lora_adapter`, requests
for v3 send `model=<model_name>-v3`, and `unload_adapter` posts to `/v1/unload_lora_adapter`.
The path is the adapter directory as the model server sees it (a shared volume).
"""

from __future__ import annotations

import os
import platform
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from gateway.backends._http import HTTPPool, UpstreamError, iter_lines
from gateway.backends.base import (
    ChatRequest,
    Choice,
    CompletionRequest,
    CompletionResult,
    ModelBackend,
    StreamDelta,
)
from gateway.backends.templates import render_completion, template_name
from gateway.errors import BackendTimeout, BackendUnavailable, Unprocessable


class OpenAIUpstreamBackend(ModelBackend):
    name = "openai_upstream"
    supports_adapters = True

    def __init__(
        self,
        base_url: str,
        *,
        model_name: str,
        upstream_model: str | None = None,
        api_key: str | None = None,
        prompt_family: str = "auto",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.upstream_model = upstream_model or model_name
        # Without a tokenizer to inspect, "auto" cannot detect a FIM family: send the prefix.
        self.family = "plain" if prompt_family == "auto" else prompt_family
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._session: HTTPPool | None = None
        self._adapters: dict[str, str] = {}  # adapter name -> lora_path sent upstream

    def lora_name(self, adapter: str) -> str:
        """The name vLLM knows adapter ``adapter`` by (what requests send as ``model``)."""
        return f"{self.model_name}-{adapter}"

    def adapters(self) -> list[str]:
        return sorted(self._adapters)

    async def load_adapter(self, name: str, path: Path) -> None:
        """POST /v1/load_lora_adapter; an adapter vLLM already has counts as loaded."""
        lora = self.lora_name(name)
        body = {"lora_name": lora, "lora_path": str(path)}
        status, message = await self._admin("/load_lora_adapter", body)
        if status >= 400 and "already" not in message.lower():
            raise BackendUnavailable(
                f"adapter {name}: upstream refused to load {lora} from {path} ({status}): {message}"
            )
        self._adapters = {**self._adapters, name: str(path)}

    async def unload_adapter(self, name: str) -> None:
        """POST /v1/unload_lora_adapter; an adapter vLLM does not have counts as unloaded."""
        self._adapters = {k: v for k, v in self._adapters.items() if k != name}
        lora = self.lora_name(name)
        status, message = await self._admin("/unload_lora_adapter", {"lora_name": lora})
        if status >= 400 and status != 404 and "not found" not in message.lower():
            raise BackendUnavailable(
                f"adapter {name}: upstream refused to unload {lora} ({status}): {message}"
            )

    async def _admin(self, path: str, body: dict[str, Any]) -> tuple[int, str]:
        """POST to a vLLM management endpoint: (status, error message or '')."""
        session = self._require_session()
        try:
            resp = await session.post(path, orjson.dumps(body))
        except UpstreamError as exc:
            raise _translate(exc, self.base_url + path) from exc
        if resp.status < 400:
            return resp.status, ""
        return resp.status, _error_message(resp.body)

    @property
    def model_version(self) -> str:
        return f"{self.model_name}@upstream:{self.upstream_model}"

    @property
    def template_name(self) -> str:
        return template_name(self.family)

    async def start(self) -> None:
        self._session = HTTPPool(
            self.base_url,
            headers=self._headers,
            max_connections=self._max_connections,
            connect_timeout_s=self._connect_timeout_s,
            timeout_s=self._timeout_s,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def render_completion_prompt(self, request: CompletionRequest) -> str:
        return render_completion(self.family, request.prefix, request.suffix)

    def _completion_body(self, request: CompletionRequest, stream: bool) -> dict[str, Any]:
        return self._body(request, stream, prompt=self.render_completion_prompt(request))

    def _chat_body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        return self._body(request, stream, messages=messages)

    def _body(
        self, request: CompletionRequest | ChatRequest, stream: bool, **payload: Any
    ) -> dict[str, Any]:
        """The sampling fields both OpenAI endpoints share, around prompt or messages."""
        if request.model is not None and request.model not in self._adapters:
            raise BackendUnavailable(f"model version {request.model} is not loaded upstream")
        body: dict[str, Any] = {
            "model": self.lora_name(request.model) if request.model else self.upstream_model,
            **payload,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": request.n,
        }
        if request.stop:
            body["stop"] = request.stop
        if request.seed is not None:
            body["seed"] = request.seed
        if stream:
            body["stream"] = True
        return body

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        session = self._require_session()
        url = self.base_url + path
        try:
            resp = await session.post(path, orjson.dumps(body))
            if resp.status >= 400:
                self._raise_for_status(resp.status, resp.body)
            return orjson.loads(resp.body)
        except UpstreamError as exc:
            raise _translate(exc, url) from exc
        except orjson.JSONDecodeError as exc:
            raise BackendUnavailable(f"upstream {url} answered with invalid JSON") from exc

    async def _stream(
        self, path: str, body: dict[str, Any], chat: bool
    ) -> AsyncIterator[StreamDelta]:
        session = self._require_session()
        url = self.base_url + path
        try:
            status, chunks = await session.stream(path, orjson.dumps(body))
            try:
                if status >= 400:
                    self._raise_for_status(status, b"".join([c async for c in chunks]))
                async for line in iter_lines(chunks):
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = orjson.loads(data)
                    for c in chunk.get("choices", ()):
                        text = (c.get("delta") or {}).get("content") if chat else c.get("text")
                        yield StreamDelta(
                            index=c.get("index", 0),
                            text=text or "",
                            finish_reason=_finish(c.get("finish_reason")),
                        )
            finally:
                await chunks.aclose()  # type: ignore[attr-defined]
        except UpstreamError as exc:
            raise _translate(exc, url) from exc
        except orjson.JSONDecodeError as exc:
            raise BackendUnavailable(f"upstream {url} streamed invalid JSON") from exc

    def _require_session(self) -> HTTPPool:
        if self._session is None:
            raise BackendUnavailable("upstream backend is not started")
        return self._session

    def _raise_for_status(self, status: int, raw: bytes) -> None:
        message = _error_message(raw)
        if 400 <= status < 500 and status not in (401, 403, 404, 429):
            raise Unprocessable(f"upstream rejected the request ({status}): {message}")
        raise BackendUnavailable(f"upstream answered {status}: {message}")

    async def complete(self, request: CompletionRequest) -> CompletionResult:
        doc = await self._post("/completions", self._completion_body(request, stream=False))
        return self._result(
            doc, self.render_completion_prompt(request), chat=False, adapter=request.model
        )

    async def chat(self, request: ChatRequest) -> CompletionResult:
        doc = await self._post("/chat/completions", self._chat_body(request, stream=False))
        rendered = "\n".join(f"{m.role}: {m.content}" for m in request.messages)
        return self._result(doc, rendered, chat=True, adapter=request.model)

    def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta]:
        return self._stream("/completions", self._completion_body(request, stream=True), chat=False)

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[StreamDelta]:
        return self._stream("/chat/completions", self._chat_body(request, stream=True), chat=True)

    def _result(
        self, doc: dict[str, Any], rendered: str, *, chat: bool, adapter: str | None = None
    ) -> CompletionResult:
        try:
            choices = [
                Choice(
                    index=c.get("index", i),
                    text=(c["message"].get("content") or "") if chat else c["text"],
                    finish_reason=_finish(c.get("finish_reason")) or "stop",
                )
                for i, c in enumerate(doc["choices"])
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise BackendUnavailable(f"upstream answer lacks choices: {exc!r}") from exc
        usage = doc.get("usage") or {}
        return CompletionResult(
            choices=choices,
            model_version=self.version_of(adapter),
            rendered_prompt=rendered,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def health(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "device": "remote",
            "arch": platform.machine(),
            "cpu_info": f"OpenAI-compatible upstream {self.base_url}",
            "cpu_count": os.cpu_count() or 1,
            "cuda_devices": [],
            "adapters": self.adapters(),
        }


def _error_message(raw: bytes) -> str:
    """The message of an OpenAI-style (or vLLM/FastAPI-style) error body."""
    message = raw[:500].decode("utf-8", "replace")
    try:
        doc = orjson.loads(raw)
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and err.get("message"):
            message = str(err["message"])
        elif isinstance(err, str):
            message = err
        elif isinstance(doc, dict) and isinstance(doc.get("message"), str):
            message = doc["message"]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return message


def _finish(value: Any) -> Any:
    if value in ("stop", "length"):
        return value
    if value is None:
        return None
    return "stop"


def _translate(exc: UpstreamError, url: str) -> BackendTimeout | BackendUnavailable:
    if exc.timeout:
        return BackendTimeout(f"upstream {url} did not answer in time: {exc}")
    return BackendUnavailable(f"upstream {url} unreachable: {exc}")
