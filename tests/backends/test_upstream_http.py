"""The lean upstream HTTP client (plugins/backends/upstream_http.py) over real TCP:
against the fake OpenAI-compatible upstream (bench/fake_upstream.py, an aiohttp server
in its own process), and against small asyncio servers in the test's own event loop
that send exactly the bytes a case needs (framing split at awkward places, a connection
closed mid-body, no answer at all). Behaviour only, never timing."""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys

import pytest

from plugins.backends.upstream_http import (BadResponse, ConnectionClosed, ConnectTimeout,
                                            Pool, PoolTimeout)
from tests.helpers import free_port, start_process, stop_process

SSE_BODY = json.dumps({"model": "fake", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_process([sys.executable, "-m", "bench.fake_upstream", "--port", str(port),
                          "--tokens", "5"], url + "/v1/models",
                         tmp_path_factory.mktemp("uh") / "upstream.log")
    yield url
    stop_process(proc)


async def read_all_of(conn) -> bytes:
    parts = []
    while data := await conn.read():
        parts.append(data)
    return b"".join(parts)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def raw_server(handler):
    """A real TCP server on 127.0.0.1; ``handler(reader, writer, n)`` for the n-th
    connection (0-based). Yields (port, connections accepted so far)."""
    accepted = []

    async def on_conn(reader, writer):
        accepted.append(writer)
        try:
            await handler(reader, writer, len(accepted) - 1)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], accepted
    finally:
        server.close()
        for w in accepted:
            w.close()


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


# -- against the fake OpenAI-compatible upstream ------------------------------------

def test_sse_streams_are_decoded_and_the_connection_is_reused(fake):
    async def go():
        pool = Pool(fake + "/v1")
        bodies = []
        for _ in range(3):
            conn = await pool.request("POST", "/chat/completions", SSE_BODY)
            assert conn.status == 200 and conn.content_type == "text/event-stream"
            bodies.append(await read_all_of(conn))
            conn.release()
        models = await pool.request("GET", "/models")
        listed = json.loads(await models.read_all())   # a Content-Length body
        models.release()
        opened, in_use = pool.opened, pool.in_use
        await pool.close()
        return bodies, listed, opened, in_use
    bodies, listed, opened, in_use = asyncio.run(go())
    for body in bodies:
        events = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                       for e in events[:-1] if json.loads(e)["choices"])
        assert text == "xxxx" * 5
    assert listed["data"][0]["id"] == "fake"
    assert opened == 1 and in_use == 0     # one keep-alive connection served all four


def test_released_at_done_before_the_final_chunk_is_still_reused(fake):
    """Stopping at ``data: [DONE]`` (before the chunked terminator may have arrived)
    still gives the connection back for reuse."""
    async def go():
        pool = Pool(fake + "/v1")
        for _ in range(5):
            conn = await pool.request("POST", "/chat/completions", SSE_BODY)
            seen = b""
            while b"[DONE]" not in seen:
                seen += await conn.read()
            conn.release()
            await asyncio.sleep(0.05)
        opened = pool.opened
        await pool.close()
        return opened
    assert asyncio.run(go()) == 1


# -- framing, over raw TCP ------------------------------------------------------------

def test_chunked_body_split_at_every_byte_then_keep_alive():
    pieces = [b"data: one\n\n", b"", b"data: " + b"z" * 300 + b"\n\n"]
    wire = chunked(*[p for p in pieces if p])

    async def handler(reader, writer, n):
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            for i in range(len(wire)):          # one byte per TCP write
                writer.write(wire[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    async def go():
        async with raw_server(handler) as (port, accepted):
            pool = Pool(f"http://127.0.0.1:{port}/v1")
            out = []
            for _ in range(2):
                conn = await pool.request("POST", "/chat/completions", b"{}")
                out.append((conn.status, await read_all_of(conn)))
                conn.release()
            await pool.close()
            return out, len(accepted)
    out, connections = asyncio.run(go())
    assert out == [(200, b"".join(pieces))] * 2
    assert connections == 1


def test_content_length_body_in_pieces_then_keep_alive():
    body = b'{"ok": true, "pad": "' + b"p" * 5000 + b'"}'

    async def handler(reader, writer, n):
        for _ in range(3):
            head, sent = await read_request(reader)
            assert head.startswith(b"POST /v1/embeddings HTTP/1.1\r\n") and sent == b'{"a":1}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 777):
                writer.write(body[i:i + 777])
                await writer.drain()
                await asyncio.sleep(0.001)

    async def go():
        async with raw_server(handler) as (port, accepted):
            pool = Pool(f"http://127.0.0.1:{port}/v1")
            got = []
            for _ in range(3):
                conn = await pool.request("POST", "/embeddings", b'{"a":1}')
                got.append(await conn.read_all())
                conn.release()
            await pool.close()
            return got, len(accepted)
    got, connections = asyncio.run(go())
    assert got == [body] * 3 and connections == 1


def test_upstream_closing_mid_stream_is_an_error_and_frees_the_slot():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"b\r\ndata: one\n\n\r\n" + b"20\r\ndata: cut")
        await writer.drain()
        writer.close()                           # mid-chunk, no terminator

    async def go():
        async with raw_server(handler) as (port, _):
            pool = Pool(f"http://127.0.0.1:{port}", limit=1)
            conn = await pool.request("POST", "/x", b"{}")
            got = b""
            with pytest.raises(ConnectionClosed):
                while True:
                    data = await conn.read()
                    assert data, "a cut body must not look complete"
                    got += data
            conn.close()
            in_use, idle = pool.in_use, pool.idle
            await pool.close()
            return got, in_use, idle
    got, in_use, idle = asyncio.run(go())
    assert got.startswith(b"data: one\n\n")
    assert in_use == 0 and idle == 0


def test_content_length_cut_short_is_an_error():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        writer.close()

    async def go():
        async with raw_server(handler) as (port, _):
            pool = Pool(f"http://127.0.0.1:{port}")
            conn = await pool.request("GET", "/")
            with pytest.raises(ConnectionClosed):
                await conn.read_all()
            conn.close()
            await pool.close()
    asyncio.run(go())


def test_body_until_close_and_connection_close_are_not_reused():
    async def handler(reader, writer, n):
        await read_request(reader)
        if n == 0:      # no length, no chunking: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def go():
        async with raw_server(handler) as (port, accepted):
            pool = Pool(f"http://127.0.0.1:{port}")
            got = []
            for _ in range(3):
                conn = await pool.request("GET", "/")
                got.append(await conn.read_all())
                conn.release()
            await pool.close()
            return got, len(accepted)
    got, connections = asyncio.run(go())
    assert got == [b"until close", b"ok", b"ok"] and connections == 3


def test_idle_connection_closed_by_the_upstream_is_retried_on_a_new_one():
    """The upstream drops a kept-alive connection between requests (its keep-alive
    timeout): the next request goes out again on a new connection, unnoticed."""
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%d" % n)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()                          # idle: closed without a word

    async def go():
        async with raw_server(handler) as (port, accepted):
            pool = Pool(f"http://127.0.0.1:{port}")
            got = []
            for _ in range(3):
                conn = await pool.request("POST", "/x", b"{}")
                got.append(await conn.read_all())
                conn.release()
                await asyncio.sleep(0.2)
            await pool.close()
            return got, len(accepted)
    got, connections = asyncio.run(go())
    assert got == [b"0", b"1", b"2"] and connections == 3


def test_no_response_headers_within_read_timeout():
    async def handler(reader, writer, n):
        await read_request(reader)
        await asyncio.sleep(30)

    async def go():
        async with raw_server(handler) as (port, _):
            pool = Pool(f"http://127.0.0.1:{port}", read_timeout=0.2)
            with pytest.raises(TimeoutError):
                await pool.request("POST", "/x", b"{}")
            in_use = pool.in_use
            await pool.close()
            return in_use
    assert asyncio.run(go()) == 0


def test_stalled_body_within_read_timeout():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    async def go():
        async with raw_server(handler) as (port, _):
            pool = Pool(f"http://127.0.0.1:{port}", read_timeout=0.2)
            conn = await pool.request("POST", "/x", b"{}")
            assert await conn.read() == b"first"
            with pytest.raises(TimeoutError):
                await conn.read()
            conn.close()
            await pool.close()
    asyncio.run(go())


def test_not_http_is_a_bad_response():
    async def handler(reader, writer, n):
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def go():
        async with raw_server(handler) as (port, _):
            pool = Pool(f"http://127.0.0.1:{port}")
            with pytest.raises(BadResponse):
                await pool.request("GET", "/")
            in_use = pool.in_use
            await pool.close()
            return in_use
    assert asyncio.run(go()) == 0


def test_refused_connection_is_a_connection_error():
    async def go():
        pool = Pool(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(ConnectionError):
            await pool.request("GET", "/")
        return pool.in_use
    assert asyncio.run(go()) == 0


def full_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: further connection attempts get
    no answer at all (their SYNs are dropped), as from an overloaded or firewalled
    host."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(listener.getsockname())
        fillers.append(s)
    return listener, fillers


def test_connect_timeout():
    listener, fillers = full_listener()
    port = listener.getsockname()[1]

    async def go():
        pool = Pool(f"http://127.0.0.1:{port}", connect_timeout=0.3)
        with pytest.raises(ConnectTimeout):
            await pool.request("GET", "/")
        return pool.in_use
    try:
        assert asyncio.run(go()) == 0
    finally:
        for s in fillers + [listener]:
            s.close()


def test_pool_bound_waits_for_a_slot_then_times_out():
    async def go():
        done = asyncio.Event()

        async def handler(reader, writer, n):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await done.wait()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            with contextlib.suppress(asyncio.IncompleteReadError):
                await read_request(reader)   # keep-alive: a later request may come
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(1)

        async with raw_server(handler) as (port, accepted):
            pool = Pool(f"http://127.0.0.1:{port}", limit=2)
            held = [await pool.request("POST", "/x", b"{}") for _ in range(2)]
            assert pool.in_use == 2
            with pytest.raises(PoolTimeout):
                await pool.request("POST", "/x", b"{}", pool_timeout=0.2)
            assert pool.in_use == 2
            waiting = asyncio.ensure_future(pool.request("POST", "/x", b"{}", pool_timeout=30))
            await asyncio.sleep(0.1)
            assert not waiting.done()            # still no slot
            done.set()
            assert await read_all_of(held[0]) == b""
            held[0].release()                    # a slot (and its connection) comes free
            third = await waiting
            assert third.status == 200 and await third.read_all() == b""
            third.release()
            held[1].close()
            in_use, connections = pool.in_use, len(accepted)
            await pool.close()
            return in_use, connections
    in_use, connections = asyncio.run(go())
    assert in_use == 0 and connections == 2      # the third reused the first's connection
