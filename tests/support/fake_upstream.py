"""A fast OpenAI-compatible upstream for tests and benchmarks (answers at once).

Stands in for vLLM, which needs a GPU we do not have. Implements /v1/models,
/v1/completions and /v1/chat/completions (with SSE streaming) on a bare asyncio protocol,
so that it is never the bottleneck of a proxy-overhead measurement. Also vLLM's runtime LoRA
endpoints, /v1/load_lora_adapter and /v1/unload_lora_adapter (answers and status codes as
vLLM gives them); a completion whose ``model`` names a loaded adapter starts with
``[<lora_name>] `` so tests can see which adapter served it.
Run it alone: `python -m tests.support.fake_upstream --port 9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from typing import Any

COMPLETION_TEXT = "return a + b\n"


def _completion(body: dict[str, Any], tag: str = "") -> dict[str, Any]:
    n = int(body.get("n") or 1)
    return {
        "id": "cmpl-upstream",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {"index": i, "text": tag + COMPLETION_TEXT, "finish_reason": "stop", "logprobs": None}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _chat(body: dict[str, Any]) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": "Use a dict."},
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
    }


def _sse_chunks(body: dict[str, Any], chat: bool) -> list[bytes]:
    pieces = ["return ", "a + b", "\n"] if not chat else ["Use ", "a dict."]
    out = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
        if chat:
            choice["delta"] = {"content": piece}
        else:
            choice["text"] = piece
        out.append(b"data: " + json.dumps({"id": "x", "choices": [choice]}).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


class _Http(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive server: enough for OpenAI clients, aiohttp and httpx."""

    def __init__(self, server: FakeUpstream) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4 : head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length :]
            self.handle(method, path, body)

    def _send(self, status: int, payload: bytes, ctype: bytes = b"application/json") -> None:
        assert self.transport is not None
        reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request", 500: b"Error"}.get(
            status, b"X"
        )
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (status, reason, ctype, len(payload))
            + payload
        )

    def handle(self, method: str, path: str, raw: bytes) -> None:
        self.server.requests += 1
        if self.server.fail_status:
            self._send(self.server.fail_status, b'{"error": {"message": "upstream is failing"}}')
            return
        body = json.loads(raw) if raw else {}
        self.server.last_body = body
        if method == "POST" and path.endswith("/load_lora_adapter"):
            self._load_lora(body)
        elif method == "POST" and path.endswith("/unload_lora_adapter"):
            self._unload_lora(body)
        elif method == "GET" and path.endswith("/models"):
            self._send(200, b'{"object":"list","data":[{"id":"fake","object":"model"}]}')
        elif method == "POST" and path.endswith("/completions"):
            chat = path.endswith("/chat/completions")
            if body.get("stream"):
                assert self.transport is not None
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for chunk in _sse_chunks(body, chat):
                    self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.transport.write(b"0\r\n\r\n")
            else:
                model = body.get("model")
                tag = f"[{model}] " if model in self.server.loras else ""
                doc = _chat(body) if chat else _completion(body, tag)
                self._send(200, json.dumps(doc).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def _load_lora(self, body: dict[str, Any]) -> None:
        name, path = body.get("lora_name"), body.get("lora_path")
        self.server.lora_calls.append(("load", body))
        if not name or not path:
            self._error(400, "Both 'lora_name' and 'lora_path' must be provided.")
        elif name in self.server.loras:
            self._error(400, f"The lora adapter '{name}' has already been loaded.")
        else:
            self.server.loras[name] = path
            self._send(200, f"Success: LoRA adapter '{name}' added successfully.".encode(),
                       b"text/plain")  # fmt: skip

    def _unload_lora(self, body: dict[str, Any]) -> None:
        name = body.get("lora_name")
        self.server.lora_calls.append(("unload", body))
        if name not in self.server.loras:
            self._error(404, f"The lora adapter '{name}' cannot be found.")
        else:
            del self.server.loras[name]
            self._send(200, f"Success: LoRA adapter '{name}' removed successfully.".encode(),
                       b"text/plain")  # fmt: skip

    def _error(self, status: int, message: str) -> None:
        doc = {"object": "error", "message": message, "type": "BadRequestError", "code": status}
        self._send(status, json.dumps(doc).encode())


class FakeUpstream:
    """Runs in its own thread and event loop; `url` is the OpenAI base URL (…/v1)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.requests = 0
        self.fail_status = 0
        self.last_body: dict[str, Any] | None = None
        self.loras: dict[str, str] = {}  # lora_name -> lora_path (runtime-loaded adapters)
        self.lora_calls: list[tuple[str, dict[str, Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def serve(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Http(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            self._loop.stop()  # type: ignore[union-attr]

        self._loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    upstream = FakeUpstream(args.host, args.port)

    async def run() -> None:
        await upstream.serve()
        print(f"fake upstream on {upstream.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
