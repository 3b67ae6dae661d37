"""The lean upstream HTTP client against real sockets: scripted asyncio servers that answer
the way model servers (and broken ones) do."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.backends._http import HTTPPool, UpstreamError, iter_lines

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def _serve(handler: Handler) -> tuple[asyncio.AbstractServer, str, list[int]]:
    """Starts a server; returns it, its base URL and the list of connection numbers seen."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await handler(reader, writer, connections[-1])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1", connections


def _run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))


def test_when_two_requests_then_one_keep_alive_connection_and_path_prefixed():
    seen: list[bytes] = []

    async def handler(reader, writer, _n):
        while True:
            request = await _read_request(reader)
            seen.append(request)
            writer.write(_ok(b'{"ok": %d}' % len(seen)))
            await writer.drain()

    async def main():
        server, url, connections = await _serve(handler)
        pool = HTTPPool(url, headers={"Authorization": "Bearer k"})
        first = await pool.post("/completions", b'{"a": 1}')
        second = await pool.post("/completions", b'{"a": 2}')
        await pool.close()
        server.close()
        assert (first.status, first.body) == (200, b'{"ok": 1}')
        assert second.body == b'{"ok": 2}'
        assert len(connections) == 1
        assert seen[0].startswith(b"POST /v1/completions HTTP/1.1\r\n")
        assert b"Authorization: Bearer k\r\n" in seen[0]
        assert seen[1].endswith(b'{"a": 2}')

    _run(main())


def test_when_response_chunked_then_body_reassembled():
    async def handler(reader, writer, _n):
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async def main():
        server, url, _ = await _serve(handler)
        pool = HTTPPool(url)
        resp = await pool.post("/x", b"{}")
        await pool.close()
        server.close()
        assert resp.body == b"hello world"

    _run(main())


def test_when_server_closed_idle_connection_then_request_retried_on_a_fresh_one():
    async def handler(reader, writer, n):
        await _read_request(reader)
        writer.write(_ok(b"first" if n == 0 else b"second"))
        await writer.drain()
        # keep-alive promised, but the server drops the connection while it is idle

    async def main():
        server, url, connections = await _serve(handler)
        pool = HTTPPool(url)
        assert (await pool.post("/x", b"{}")).body == b"first"
        await asyncio.sleep(0.1)  # the close reaches the client
        assert (await pool.post("/x", b"{}")).body == b"second"
        await pool.close()
        server.close()
        assert len(connections) == 2

    _run(main())


def test_when_fresh_connection_closed_without_answer_then_error_not_retried():
    async def handler(reader, writer, _n):
        await _read_request(reader)  # then close without a byte

    async def main():
        server, url, connections = await _serve(handler)
        pool = HTTPPool(url)
        with pytest.raises(UpstreamError) as err:
            await pool.post("/x", b"{}")
        await pool.close()
        server.close()
        assert not err.value.timeout
        assert len(connections) == 1

    _run(main())


def test_when_server_never_answers_then_timeout_error_and_next_request_works():
    async def handler(reader, writer, n):
        await _read_request(reader)
        if n == 0:
            await asyncio.sleep(10)
        writer.write(_ok(b"late but fine"))
        await writer.drain()
        await reader.read()

    async def main():
        server, url, _ = await _serve(handler)
        pool = HTTPPool(url, timeout_s=0.2)
        with pytest.raises(UpstreamError) as err:
            await pool.post("/x", b"{}")
        assert err.value.timeout
        # the timed-out connection was thrown away, not pooled with a pending answer
        assert (await pool.post("/x", b"{}")).body == b"late but fine"
        await pool.close()
        server.close()

    _run(main())


def test_when_answer_is_not_http_then_error():
    async def handler(reader, writer, _n):
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def main():
        server, url, _ = await _serve(handler)
        pool = HTTPPool(url)
        with pytest.raises(UpstreamError, match="malformed"):
            await pool.post("/x", b"{}")
        await pool.close()
        server.close()

    _run(main())


def test_when_body_ends_with_connection_then_read_to_close():
    async def handler(reader, writer, _n):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async def main():
        server, url, _ = await _serve(handler)
        pool = HTTPPool(url)
        resp = await pool.post("/x", b"{}")
        await pool.close()
        server.close()
        assert resp.body == b"all of it"

    _run(main())


def test_when_nothing_listens_then_connect_error_names_the_origin():
    async def main():
        server, url, _ = await _serve(lambda r, w, n: asyncio.sleep(0))
        server.close()
        await server.wait_closed()
        pool = HTTPPool(url)
        with pytest.raises(UpstreamError, match="cannot connect to http://127.0.0.1"):
            await pool.post("/x", b"{}")

    _run(main())


def test_when_streaming_then_chunks_arrive_before_the_end():
    release = asyncio.Event

    async def main():
        gate = release()

        async def handler(reader, writer, _n):
            while True:
                await _read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"b\r\ndata: one\n\n\r\n")
                await writer.drain()
                await gate.wait()
                writer.write(b"d\r\ndata: [DONE]\n\r\n0\r\n\r\n")
                await writer.drain()

        server, url, connections = await _serve(handler)
        pool = HTTPPool(url)
        status, chunks = await pool.stream("/x", b"{}")
        lines = iter_lines(chunks)
        assert status == 200
        assert await anext(lines) == b"data: one"  # while the server still holds the rest
        gate.set()
        rest = [line async for line in lines]
        assert rest == [b"", b"data: [DONE]"]
        # the finished stream's connection is reused
        status, chunks = await pool.stream("/x", b"{}")
        await chunks.aclose()  # abandoned mid-stream: closed, not pooled
        await pool.close()
        server.close()
        assert len(connections) == 1

    _run(main())


def test_when_max_connections_reached_then_requests_wait_for_a_free_one():
    active = 0
    peak = 0

    async def handler(reader, writer, _n):
        nonlocal active, peak
        while True:
            await _read_request(reader)
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.02)
            active -= 1
            writer.write(_ok(b"{}"))
            await writer.drain()

    async def main():
        server, url, connections = await _serve(handler)
        pool = HTTPPool(url, max_connections=3)
        answers = await asyncio.gather(*(pool.post("/x", b"{}") for _ in range(12)))
        await pool.close()
        server.close()
        assert [a.status for a in answers] == [200] * 12
        assert peak <= 3 and len(connections) <= 3

    _run(main())


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host/v1",  # not http(s)
        "127.0.0.1:8000/v1",  # no scheme
        "http:///v1",  # no host
    ],
)
def test_when_url_unusable_then_refused(url):
    with pytest.raises(ValueError, match="upstream URL"):
        HTTPPool(url)
