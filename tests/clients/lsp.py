"""Minimal clients for language-server style agents spoken to over a child's stdio.

`LspClient` frames JSON-RPC 2.0 with `Content-Length` headers (the Language Server Protocol
base protocol). `JsonLineClient` speaks the tabby-agent's own line protocol, which its Vim and
IntelliJ plugins use: one JSON array per line, `[id, {"func": name, "args": [...]}]` out and
`[id, result]` back, with `[0, {"event": ...}]` for agent events.

Both read stdout on a thread, so a request never blocks on output the test has not read yet.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, BinaryIO

DEFAULT_TIMEOUT_S = 60.0


class AgentExited(RuntimeError):
    """The child closed its stdout before answering."""


class RpcError(RuntimeError):
    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error.get('code')} {error.get('message')}")
        self.error = error


class _ChildClient(ABC):
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stdin is None or proc.stdout is None:
            raise ValueError("start the child with stdin=PIPE and stdout=PIPE")
        self.proc = proc
        self._stdin: BinaryIO = proc.stdin
        self._stdout: BinaryIO = proc.stdout
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, Future[Any]]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="agent-stdout", daemon=True)

    def _start(self) -> None:
        self._reader.start()

    def _register(self, method: str) -> tuple[int, Future[Any]]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise AgentExited(f"{method}: the agent has exited (code {self.proc.poll()})")
            request_id = next(self._ids)
            self._pending[request_id] = (method, future)
        return request_id, future

    def _resolve(
        self, request_id: int, result: Any = None, error: dict[str, Any] | None = None
    ) -> None:
        with self._lock:
            entry = self._pending.pop(request_id, None)
        if entry is None:
            return
        method, future = entry
        if error is not None:
            future.set_exception(RpcError(method, error))
        else:
            future.set_result(result)

    def _fail_all(self) -> None:
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        code = self.proc.poll()
        for method, future in pending.values():
            future.set_exception(AgentExited(f"{method}: the agent exited (code {code})"))

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            self._stdin.write(data)
            self._stdin.flush()

    def _read_loop(self) -> None:
        try:
            self._read_messages()
        finally:
            self._fail_all()

    @abstractmethod
    def _read_messages(self) -> None:
        """Reads until EOF, resolving pending calls."""

    def stop(self, timeout_s: float = 10.0, *, exiting: bool = False) -> int:
        """Ends the child and returns its exit code.

        With `exiting`, the child was asked to exit and gets `timeout_s` to do so before it is
        terminated; a code of -15 (SIGTERM) then tells the caller that it did not.
        """
        if exiting:
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
        elif self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)
        self._reader.join(timeout_s)
        for stream in (self._stdin, self._stdout):
            stream.close()
        return self.proc.returncode


class LspClient(_ChildClient):
    """JSON-RPC 2.0 with LSP framing. Server-to-client requests get `null` unless handled."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(proc)
        self.notifications: list[dict[str, Any]] = []
        self.server_requests: list[dict[str, Any]] = []
        self.handlers: dict[str, Callable[[Any], Any]] = {}
        self._start()

    def request(self, method: str, params: Any = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        request_id, future = self._register(method)
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return future.result(timeout_s)

    def notify(self, method: str, params: Any = None) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        self._write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def _read_messages(self) -> None:
        while True:
            length = None
            while True:
                line = self._stdout.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:
                raise ValueError("LSP message without Content-Length")
            body = self._stdout.read(length)
            if len(body) < length:
                return
            self._dispatch(json.loads(body))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:
            self.server_requests.append(message)
            handler = self.handlers.get(message["method"])
            result = handler(message.get("params")) if handler else None
            self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})
        elif "method" in message:
            self.notifications.append(message)
        else:
            self._resolve(message["id"], message.get("result"), message.get("error"))

    def shutdown(self, timeout_s: float = 10.0) -> int:
        """The polite LSP ending, `shutdown` then `exit`; returns the exit code (0 if obeyed)."""
        self.request("shutdown", None, timeout_s)
        self.notify("exit")
        return self.stop(timeout_s, exiting=True)


class JsonLineClient(_ChildClient):
    """tabby-agent's line protocol: every call is a method of its `Agent` interface."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(proc)
        self.events: list[dict[str, Any]] = []  # statusChanged, configUpdated, ...
        # With file logging on, the agent's log rotator prints a notice to stdout.
        self.stray_lines: list[bytes] = []
        self._start()

    def call(self, func: str, *args: Any, timeout_s: float = DEFAULT_TIMEOUT_S) -> Any:
        request_id, future = self._register(func)
        line = json.dumps([request_id, {"func": func, "args": list(args)}]) + "\n"
        self._write(line.encode())
        return future.result(timeout_s)

    def _read_messages(self) -> None:
        for raw in self._stdout:
            if not raw.strip():
                continue
            try:
                request_id, payload = json.loads(raw)
            except ValueError:
                self.stray_lines.append(raw)
                continue
            if request_id == 0:
                self.events.append(payload)
            else:
                self._resolve(request_id, payload)
