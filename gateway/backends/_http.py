"""A lean pooled HTTP/1.1 client for the one hop that matters: gateway -> model server.

Why not aiohttp's client for this hop: per request it builds tracing hooks, timeout
handles, cookie jars and request-info objects; on the completion-overhead bench that was
about two thirds of the gateway's serving time. This client does only what the hop needs:
POST a JSON body on a pooled keep-alive connection and read the response (Content-Length,
chunked, or until close) with llhttp (httptools, which uvicorn already uses to read requests).

Errors (all `UpstreamError`, with `timeout` set for time-outs) carry no payload text.
A pooled connection the server closed while idle is retried once on a fresh connection,
and only if the server had sent nothing back for the request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

__all__ = ["HTTPPool", "UpstreamError", "Response"]

_END = object()


class UpstreamError(Exception):
    """The upstream could not be reached or answered with something that is not HTTP."""

    def __init__(self, message: str, *, timeout: bool = False, retryable: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.retryable = retryable


@dataclass(slots=True)
class Response:
    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; serves one request at a time."""

    __slots__ = (
        "transport",
        "parser",
        "closed",
        "_waiter",
        "_headers_waiter",
        "_chunks",
        "_queue",
        "_got_bytes",
        "_complete",
        "status",
        "keep_alive",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._headers_waiter: asyncio.Future[None] | None = None
        self._chunks: list[bytes] = []
        self._queue: asyncio.Queue[object] | None = None
        self._got_bytes = False
        self._complete = False
        self.status = 0
        self.keep_alive = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(UpstreamError("upstream answered with a malformed HTTP response"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._complete:
            return
        if self._got_bytes and self.status and not self.keep_alive:
            # A body delimited by the end of the connection.
            self.on_message_complete()
            return
        self._fail(
            UpstreamError(
                "upstream closed the connection before answering",
                retryable=not self._got_bytes,
            )
        )

    # llhttp callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if self._headers_waiter is not None and not self._headers_waiter.done():
            self._headers_waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._queue is not None:
            self._queue.put_nowait(body)
        else:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._complete = True
        if self._queue is not None:
            self._queue.put_nowait(_END)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # client side
    def begin(self, request: bytes, *, streaming: bool) -> None:
        loop = asyncio.get_running_loop()
        self._chunks = []
        self._got_bytes = False
        self._complete = False
        self.status = 0
        self.keep_alive = False
        self._waiter = None if streaming else loop.create_future()
        self._headers_waiter = loop.create_future() if streaming else None
        self._queue = asyncio.Queue() if streaming else None
        assert self.transport is not None
        self.transport.write(request)

    def body(self) -> bytes:
        return b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]

    def _fail(self, exc: UpstreamError) -> None:
        for waiter in (self._headers_waiter, self._waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        if self._queue is not None:
            self._queue.put_nowait(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class HTTPPool:
    """Keep-alive connections to one origin (`http://` or `https://`), at most
    `max_connections` at a time; requests beyond that wait for a free connection."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 256,
        connect_timeout_s: float = 5.0,
        timeout_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream URL must be http(s)://host[:port]/..., not {base_url!r}")
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._prefix = parts.path.rstrip("/")
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        default_port = self._port == (443 if self._tls else 80)
        host_header = self._host if default_port else f"{self._host}:{self._port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head_tail = f"Host: {host_header}\r\n{extra}".encode("latin-1")
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    @property
    def origin(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    def _request_bytes(self, path: str, body: bytes) -> bytes:
        head = (
            f"POST {self._prefix}{path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n".encode()
            + self._head_tail
            + b"\r\n"
        )
        return head + body

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(_Connection, self._host, self._port, ssl=self._ssl),
                self._connect_timeout_s,
            )
        except TimeoutError as exc:
            raise UpstreamError(
                f"connecting to {self.origin} timed out after {self._connect_timeout_s}s",
                timeout=True,
            ) from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.origin}: {exc.strerror or exc}") from exc
        return conn

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                return conn
        return None

    def _release(self, conn: _Connection) -> None:
        if conn._complete and conn.keep_alive and not conn.closed and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()

    async def post(self, path: str, body: bytes) -> Response:
        """POSTs `body` (JSON) and returns status and the whole response body."""
        if self._closed:
            raise UpstreamError("the upstream client is closed")
        request = self._request_bytes(path, body)
        async with self._slots:
            conn = self._take_idle()
            reused = conn is not None
            for attempt in (0, 1):
                if conn is None:
                    conn = await self._connect()
                try:
                    await self._exchange(conn, request)
                except UpstreamError as exc:
                    conn.abort()
                    if reused and exc.retryable and attempt == 0:
                        conn, reused = None, False
                        continue
                    raise
                response = Response(conn.status, conn.body())
                self._release(conn)
                return response
        raise AssertionError("unreachable")

    async def _exchange(self, conn: _Connection, request: bytes) -> None:
        conn.begin(request, streaming=False)
        waiter = conn._waiter
        assert waiter is not None
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._timeout_s, _expire, waiter, self._timeout_s)
        try:
            await waiter
        finally:
            timer.cancel()

    async def stream(self, path: str, body: bytes) -> tuple[int, AsyncIterator[bytes]]:
        """POSTs `body`; returns the status once headers arrive, and an iterator over the
        body's chunks as they come. Iterate it to the end or close it (`aclose`): an
        abandoned stream's connection is closed, not reused."""
        if self._closed:
            raise UpstreamError("the upstream client is closed")
        request = self._request_bytes(path, body)
        await self._slots.acquire()
        conn: _Connection | None = None
        try:
            conn = self._take_idle()
            reused = conn is not None
            for attempt in (0, 1):
                if conn is None:
                    conn = await self._connect()
                conn.begin(request, streaming=True)
                headers = conn._headers_waiter
                assert headers is not None
                timer = asyncio.get_running_loop().call_later(
                    self._timeout_s, _expire, headers, self._timeout_s
                )
                try:
                    await headers
                except UpstreamError as exc:
                    conn.abort()
                    if reused and exc.retryable and attempt == 0:
                        conn, reused = None, False
                        continue
                    raise
                finally:
                    timer.cancel()
                break
        except BaseException:
            if conn is not None:
                conn.abort()
            self._slots.release()
            raise
        assert conn is not None
        return conn.status, self._chunks_of(conn)

    async def _chunks_of(self, conn: _Connection) -> AsyncIterator[bytes]:
        queue = conn._queue
        assert queue is not None
        try:
            while True:
                if not queue.empty():
                    item = queue.get_nowait()
                else:
                    # the read time-out applies between chunks: a stalled stream's limit
                    try:
                        item = await asyncio.wait_for(queue.get(), self._timeout_s)
                    except TimeoutError:
                        raise UpstreamError(
                            f"upstream stream stalled for {self._timeout_s}s", timeout=True
                        ) from None
                if item is _END:
                    return
                if isinstance(item, UpstreamError):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            if conn._complete:
                self._release(conn)
            else:
                conn.abort()
            self._slots.release()

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


def _expire(waiter: asyncio.Future[object], after_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(
            UpstreamError(f"upstream did not answer within {after_s}s", timeout=True)
        )


async def iter_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Splits a chunk stream into lines (without the line ending)."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r")
    if pending:
        yield pending.rstrip(b"\r")
