"""The private internals of Tornado and mongoeco that the gateway uses are still there and
still behave as :mod:`gateway.http.tornado_compat` and :mod:`gateway.store.mongoeco_compat` say.

Each failure names the internal, the installed version and the tested one (the cap in
setup.cfg). Tornado's are exercised through the compat module over real sockets: a
Tornado HTTPServer on a loopback port, raw HTTP/1.1 bytes, a WebSocket client; mongoeco's
through its own in-process client on both engines.
"""
from __future__ import annotations

import asyncio
import configparser
import inspect
import re
from pathlib import Path

import mongoeco
import pytest
import tornado
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream
from tornado.websocket import WebSocketProtocol13

from gateway.store import mongoeco_compat

from gateway.http import tornado_compat
from gateway.http.tornado_compat import (BARE_400, HTTP1ConnectionHooks, SmallQueue,
                                    WebSocketProtocol13Hooks)

ROOT = Path(__file__).resolve().parent.parent


def tornado_broke(internal: str, what: str) -> str:
    tested = tornado_compat.tested_version()
    return (f"TORNADO INTERNAL CHANGED: `{internal}` {what}. Installed Tornado "
            f"{tornado.version}; gateway/http/tornado_compat.py was written against Tornado "
            f"{tested} (setup.cfg caps it at {tested}.x). Adapt gateway/http/tornado_compat.py "
            f"before raising the cap.")


def mongoeco_broke(internal: str, what: str) -> str:
    tested = mongoeco_compat.tested_version()
    return (f"MONGOECO INTERNAL CHANGED: `{internal}` {what}. Installed mongoeco "
            f"{mongoeco.__version__}; gateway/store/mongoeco_compat.py was written against "
            f"mongoeco {tested} (setup.cfg caps it at {tested}.x). Adapt "
            f"gateway/store/mongoeco_compat.py before raising the cap.")


# -- versions and caps ------------------------------------------------------------------
def requirement(name: str) -> str:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    found = [r for r in cfg["options"]["install_requires"].split()
             if re.match(rf"{name}\b", r)]
    assert len(found) == 1, f"setup.cfg: one requirement for {name} expected, got {found}"
    return found[0]


@pytest.mark.parametrize("name, compat, installed", [
    ("tornado", tornado_compat, tornado.version),
    ("mongoeco", mongoeco_compat, mongoeco.__version__),
])
def test_the_installed_minor_version_is_the_tested_one_and_setup_cfg_caps_it(
        name, compat, installed):
    major, minor = compat.TESTED
    assert tuple(int(p) for p in installed.split(".")[:2]) == compat.TESTED, (
        f"{name} {installed} is installed, but gateway/{name}_compat.py was tested with "
        f"{major}.{minor}: run this file's tests, adapt the compat module, then move "
        f"TESTED and the cap in setup.cfg together")
    assert requirement(name) == f"{name}>={major}.{minor},<{major}.{minor + 1}", (
        f"setup.cfg must cap {name} at the tested minor version {major}.{minor}: "
        f"'{name}>={major}.{minor},<{major}.{minor + 1}', not '{requirement(name)}'")


# -- signatures of the private functions and methods used -------------------------------
SIGNATURES = [
    (httputil, "_normalize_header", ["name"]),
    (HTTP1Connection, "_parse_headers", ["self", "data"]),
    (HTTP1Connection, "_read_chunked_body", ["self", "delegate"]),
    (HTTP1Connection, "_deliver_body", ["self", "delegate", "data"]),
    (WebSocketProtocol13, "_handle_message", ["self", "opcode", "data"]),
]


@pytest.mark.parametrize("owner, name, params", SIGNATURES,
                         ids=[f"{o.__name__}.{n}" for o, n, _ in SIGNATURES])
def test_private_tornado_functions_exist_with_their_signature(owner, name, params):
    internal = f"{owner.__name__}.{name}"
    function = getattr(owner, name, None)
    assert function is not None, tornado_broke(internal, "is gone")
    got = list(inspect.signature(function).parameters)
    assert got == params, tornado_broke(internal, f"takes {got}, not {params}")


def test_deliver_body_is_a_coroutine_function():
    assert inspect.iscoroutinefunction(HTTP1Connection._deliver_body), tornado_broke(
        "HTTP1Connection._deliver_body", "is no longer a coroutine function")
    assert inspect.iscoroutinefunction(HTTP1Connection._read_chunked_body), tornado_broke(
        "HTTP1Connection._read_chunked_body", "is no longer a coroutine function")


# -- headers ----------------------------------------------------------------------------
def test_normalize_header_gives_http_header_case():
    for raw, want in [("content-type", "Content-Type"), ("X-REQUEST-ID", "X-Request-Id"),
                      ("etag", "Etag"), ("a", "A")]:
        got = tornado_compat.normalize_header(raw)
        assert got == want, tornado_broke("httputil._normalize_header",
                                          f"turns {raw!r} into {got!r}, not {want!r}")


def test_header_maps_are_what_http_headers_reads():
    headers = httputil.HTTPHeaders()
    headers.add("x-a", "1")
    headers.add("X-A", "2")
    headers["content-type"] = "text/plain"
    as_list, combined = tornado_compat.header_maps(headers)
    assert as_list == {"X-A": ["1", "2"], "Content-Type": ["text/plain"]}, tornado_broke(
        "HTTPHeaders._as_list", f"holds {as_list!r}")
    assert "X-A" not in combined and headers["X-A"] == "1,2" and combined["X-A"] == "1,2", \
        tornado_broke("HTTPHeaders._combined_cache", f"holds {combined!r}")
    # Filled directly, as gateway.http.headerparse.parse_headers does: a working HTTPHeaders.
    built = tornado_compat.RequestHeaders()
    as_list, combined = tornado_compat.header_maps(built)
    as_list.update({"Host": ["h"], "X-B": ["1", "2"]})
    combined["Host"] = "h"
    assert list(built.get_all()) == [("Host", "h"), ("X-B", "1"), ("X-B", "2")], \
        tornado_broke("HTTPHeaders._as_list", "is not what get_all() reads")
    assert built["x-b"] == "1,2" and built.get("X-B") == "1,2" and "host" in built \
        and len(built) == 2 and built.get("absent", "d") == "d", \
        tornado_broke("HTTPHeaders._as_list/_combined_cache", "are not what lookups read")
    copy = built.copy()
    assert list(copy.get_all()) == list(built.get_all()), tornado_broke(
        "HTTPHeaders._as_list", "is not what copy() reads")


# -- HTTP/1.1 connections, over real sockets --------------------------------------------
class ProbeConnection(HTTP1ConnectionHooks):
    """Records what Tornado calls through the hooks."""

    def parse_headers(self, data):
        self.calls.append(("parse_headers", len(data)))
        return super().parse_headers(data)

    def read_chunked_body(self, delegate):
        self.calls.append(("read_chunked_body",))
        return super().read_chunked_body(delegate)

    async def _deliver_body(self, delegate, data):
        self.calls.append(("_deliver_body", bytes(data)))   # Tornado's readers call this
        return await super()._deliver_body(delegate, data)


class ProbeServer(httputil.HTTPServerConnectionDelegate):
    def __init__(self) -> None:
        self.seen: list[dict] = []
        self.connections: list[ProbeConnection] = []

    def start_request(self, server_conn, conn):
        record: dict = {"class": type(conn)}
        stream = conn.stream
        record["queues"] = (type(stream._write_futures), type(stream._write_buffer._buffers))
        tornado_compat.small_write_queues(stream)
        record["small queues"] = (type(stream._write_futures),
                                  type(stream._write_buffer._buffers))
        if type(conn) is HTTP1Connection:
            conn.__class__ = ProbeConnection
            conn.calls = []
            self.connections.append(conn)
        self.seen.append(record)
        return ProbeRequest(conn, record)


class ProbeRequest(httputil.HTTPMessageDelegate):
    def __init__(self, conn, record: dict) -> None:
        self.conn, self.record, self.body = conn, record, b""

    def headers_received(self, start_line, headers):
        self.path = start_line.path
        self.record["buffered"] = tornado_compat.read_buffer_size(self.conn.stream)
        self.record["limit before"] = self.conn.body_size_limit
        self.conn.set_max_body_size(54321)
        self.record["limit after"] = self.conn.body_size_limit
        if self.path == "/deliver":
            return self._deliver()
        return None

    async def _deliver(self):
        """deliver_body hands data to a delegate as Tornado's readers do."""
        class Sink(httputil.HTTPMessageDelegate):
            got: list = []

            def data_received(self, chunk):
                self.got.append(chunk)
        sink = Sink()
        await self.conn.deliver_body(sink, b"xyz")
        self.record["delivered"] = sink.got

    def data_received(self, chunk):
        self.body += chunk

    def finish(self):
        conn, record = self.conn, self.record
        record["body"] = self.body
        ok = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")
        if self.path == "/chunked":
            conn.write_headers(ok, httputil.HTTPHeaders({"X-Probe": "1"}))
            record["chunking"] = tornado_compat.chunking_output(conn)
            conn.write(b"first")
            tornado_compat.write_last_chunk(conn, b"last")
            record["chunking after"] = tornado_compat.chunking_output(conn)
            conn.finish()
        elif self.path == "/close":
            tornado_compat.close_after_response(conn)
            conn.write_headers(ok, httputil.HTTPHeaders({"Content-Length": "2"}), b"ok")
            conn.finish()
        else:
            conn.write_headers(ok, httputil.HTTPHeaders({"Content-Length": "2"}), b"ok")
            record["chunking"] = tornado_compat.chunking_output(conn)
            conn.finish()


async def serve_probe(client) -> ProbeServer:
    """Run ``await client(port)`` against a Tornado HTTPServer with ProbeServer."""
    probe = ProbeServer()
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server = tornado.httpserver.HTTPServer(probe)
    server.add_sockets(sockets)
    try:
        await asyncio.wait_for(client(sockets[0].getsockname()[1]), 20)
    finally:
        server.stop()
        await asyncio.wait_for(server.close_all_connections(), 5)
    return probe


async def read_response(reader) -> tuple[bytes, bytes]:
    """(header block, raw body) of one response: Content-Length or chunked."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"Content-Length: (\d+)", head)
    if length:
        return head, await reader.readexactly(int(length[1]))
    body = b""
    while not body.endswith(b"\r\n0\r\n\r\n") and not body.startswith(b"0\r\n\r\n"):
        body += await reader.read(65536)
    return head, body


def test_chunked_output_flag_and_last_chunk_written_in_one_piece():
    async def client(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_response(reader)
        results.append((head, body))
        # The connection is still usable: Tornado's state agrees with what was sent.
        writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        results.append(await read_response(reader))
        writer.close()

    results: list = []
    probe = asyncio.run(serve_probe(client))
    (head, body), (_, plain) = results
    assert b"Transfer-Encoding: chunked" in head
    first, second = probe.seen[:2]    # (then a third waits for a next request)
    assert first["chunking"] is True and second["chunking"] is False, tornado_broke(
        "HTTP1Connection._chunking_output", "does not say whether the response is chunked")
    assert first["chunking after"] is False
    assert body == b"5\r\nfirst\r\n4\r\nlast\r\n0\r\n\r\n", tornado_broke(
        "HTTP1Connection._chunking_output", f"set to False did not stop Tornado framing "
        f"the end of the body again: {body!r}")
    assert plain == b"ok"


def test_close_after_response_closes_a_keep_alive_connection():
    async def client(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        results.append(await read_response(reader))
        results.append(await asyncio.wait_for(reader.read(), 5))
        writer.close()

    results: list = []
    asyncio.run(serve_probe(client))
    (_, body), rest = results
    assert body == b"ok"
    assert rest == b"", tornado_broke("HTTP1Connection._disconnect_on_finish",
                                      "set to True did not close the connection")


def test_parse_headers_chunked_body_and_body_hooks_are_called_by_tornado():
    body = b'{"model": "m"}'
    chunked = b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % len(body[5:]) + body[5:] + \
        b"\r\n0\r\n\r\n"
    request_1 = (b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                 % len(body)) + body
    request_2 = b"POST /plain HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        chunked

    async def client(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_1)          # headers and body in one write: buffered
        await read_response(reader)
        writer.write(request_2)
        await read_response(reader)
        writer.write(b"GET /deliver HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response(reader)
        writer.close()

    probe = asyncio.run(serve_probe(client))
    fixed, chunk, deliver = probe.seen[:3]
    assert fixed["class"] is HTTP1Connection, tornado_broke(
        "HTTPServer", f"makes {fixed['class']} connections, not HTTP1Connection "
        "(gateway.http.headerparse.speed_up swaps their class)")
    calls, chunk_calls = probe.connections[0].calls, probe.connections[1].calls
    header_block = len(request_1) - len(body)
    assert ("parse_headers", header_block) in calls, tornado_broke(
        "HTTP1Connection._parse_headers", f"is not called with the header block: {calls}")
    assert ("read_chunked_body",) in chunk_calls, tornado_broke(
        "HTTP1Connection._read_chunked_body", f"is not called for a chunked body: "
                                              f"{chunk_calls}")
    for got in (calls, chunk_calls):
        assert [c for c in got if c[0] == "_deliver_body"] == [("_deliver_body", body)], \
            tornado_broke("HTTP1Connection._deliver_body", f"is not how Tornado's readers "
                                                           f"deliver a body: {got}")
    assert deliver["delivered"] == [b"xyz"], tornado_broke(
        "HTTP1Connection._deliver_body", "does not hand data to the delegate")
    assert fixed["body"] == body and chunk["body"] == body
    assert fixed["limit before"] == 100 * 1024 * 1024 and fixed["limit after"] == 54321, \
        tornado_broke("HTTP1Connection._max_body_size", "is not what set_max_body_size sets")
    assert fixed["buffered"] >= len(body), tornado_broke(
        "IOStream._read_buffer_size", f"is {fixed['buffered']} while a {len(body)}-byte "
        "body that came with the headers waits in the buffer")


def test_write_queues_are_empty_deques_and_work_as_small_queues():
    import collections
    import socket

    async def main():
        left, right = socket.socketpair()
        stream = IOStream(left)
        before = (type(stream._write_futures), type(stream._write_buffer._buffers))
        assert before == (collections.deque, collections.deque), tornado_broke(
            "IOStream._write_futures / _write_buffer._buffers",
            f"are {before} on a new stream, not two empty deques")
        tornado_compat.small_write_queues(stream)
        after = (type(stream._write_futures), type(stream._write_buffer._buffers))
        assert after == (SmallQueue, SmallQueue), tornado_broke(
            "IOStream._write_futures / _write_buffer._buffers", "were not swapped")
        peer = IOStream(right)
        try:
            big = stream.write(b"x" * 700000 + b"!")   # more than the socket takes at once
            data = await asyncio.wait_for(peer.read_bytes(700001), 5)
            await asyncio.wait_for(big, 5)
            writes = [stream.write(b"%d" % n) for n in range(5)]   # several pending
            await asyncio.wait_for(asyncio.gather(*writes), 5)
            rest = await asyncio.wait_for(peer.read_bytes(5), 5)
        finally:
            stream.close()
            peer.close()
        return data, rest

    data, rest = asyncio.run(main())
    assert data == b"x" * 700000 + b"!" and rest == b"01234", tornado_broke(
        "IOStream write queues", "as SmallQueue lose or reorder writes")


def test_a_malformed_request_is_answered_with_the_bare_400():
    async def client(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NOT A REQUEST LINE\r\n\r\n")
        results.append(await asyncio.wait_for(reader.read(), 5))
        writer.close()

    results: list = []
    asyncio.run(serve_probe(client))
    assert results == [BARE_400], tornado_broke(
        "HTTP1Connection (bad request)", f"answers {results!r}, not {BARE_400!r} "
        "(gateway.http.guard gives that exact write a JSON body)")


# -- WebSocket --------------------------------------------------------------------------
class ProbeProtocol(WebSocketProtocol13Hooks):
    def handle_message(self, opcode, data):
        self.handler.seen.append((opcode, bytes(data), self.frame_compressed))
        return super().handle_message(opcode, data)


class EchoSocket(tornado.websocket.WebSocketHandler):
    seen: list = []
    protocol_class: list = []
    compress = False

    def get_compression_options(self):
        return {} if self.compress else None

    def get_websocket_protocol(self):
        protocol = super().get_websocket_protocol()
        self.protocol_class.append(type(protocol))
        if type(protocol) is WebSocketProtocol13:
            protocol.__class__ = ProbeProtocol
        return protocol

    def on_message(self, message):
        return self.write_message(message, binary=isinstance(message, bytes))


@pytest.mark.parametrize("compress", [False, True])
def test_handle_message_and_frame_compressed(compress, monkeypatch):
    monkeypatch.setattr(EchoSocket, "seen", [])
    monkeypatch.setattr(EchoSocket, "protocol_class", [])
    monkeypatch.setattr(EchoSocket, "compress", compress)
    text = "h\u00e9llo " * 20

    async def main():
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(tornado.web.Application([("/ws", EchoSocket)]))
        server.add_sockets(sockets)
        try:
            url = f"ws://127.0.0.1:{sockets[0].getsockname()[1]}/ws"
            conn = await tornado.websocket.websocket_connect(
                url, compression_options={} if compress else None)
            await conn.write_message(text)
            echoed = [await conn.read_message()]
            await conn.write_message(b"\x00\xff", binary=True)
            echoed.append(await conn.read_message())
            conn.close()
            return echoed
        finally:
            server.stop()
            await server.close_all_connections()

    echoed = asyncio.run(asyncio.wait_for(main(), 20))
    assert EchoSocket.protocol_class == [WebSocketProtocol13], tornado_broke(
        "WebSocketHandler.get_websocket_protocol", f"returns {EchoSocket.protocol_class}")
    assert echoed == [text, b"\x00\xff"], tornado_broke(
        "WebSocketProtocol13._handle_message", f"overridden, no longer delivers: {echoed}")
    (op1, data1, comp1), (op2, data2, comp2) = EchoSocket.seen
    assert (op1, op2) == (0x1, 0x2), tornado_broke(
        "WebSocketProtocol13._handle_message", f"gets opcodes {op1}, {op2}, not 1, 2")
    assert comp1 is comp2 is compress, tornado_broke(
        "WebSocketProtocol13._frame_compressed", f"is {comp1}, {comp2} with compression "
        f"{'on' if compress else 'off'}")
    if not compress:
        assert data1 == text.encode() and data2 == b"\x00\xff", tornado_broke(
            "WebSocketProtocol13._handle_message", "does not get the message's bytes")
    else:
        assert data1 != text.encode(), tornado_broke(
            "WebSocketProtocol13._handle_message", "gets compressed messages decompressed "
            "(gateway.handlers.ws checks UTF-8 only when frame_compressed is False)")


# -- RequestHandler ---------------------------------------------------------------------
class Recording(tornado.web.RequestHandler):
    """Records which attributes ``clear`` assigns, and the response-state accessors."""

    results: dict = {}
    recording: set | None = None

    def __setattr__(self, name, value):
        if self.recording is not None:
            self.recording.add(name)
        super().__setattr__(name, value)

    async def post(self):
        r = self.results
        r["finished before"] = tornado_compat.response_finished(self)
        r["written before"] = tornado_compat.headers_written(self)
        self.set_status(418)
        r["reason"] = tornado_compat.status_reason(self)

        type(self).recording = set()
        tornado.web.RequestHandler.clear(self)
        r["tornado clear"] = type(self).recording
        r["tornado headers"] = sorted(self._headers)
        type(self).recording = set()
        tornado_compat.reset_response(self, httputil.HTTPHeaders({"X-Mine": "1"}))
        r["compat clear"] = type(self).recording
        type(self).recording = None
        r["after reset"] = (self.get_status(), self._reason, list(self._write_buffer))

        self.write("a")
        await self.flush()
        r["written after flush"] = tornado_compat.headers_written(self)
        tornado_compat.replace_headers(self, httputil.HTTPHeaders())
        self.finish("b")
        r["finished after"] = tornado_compat.response_finished(self)


def test_request_handler_state_that_compat_reads_and_resets(monkeypatch):
    monkeypatch.setattr(Recording, "results", {})

    async def main():
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(tornado.web.Application([("/", Recording)]))
        server.add_sockets(sockets)
        try:
            reader, writer = await asyncio.open_connection(*sockets[0].getsockname()[:2])
            writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            head, body = await read_response(reader)
            writer.close()
            return head, body
        finally:
            server.stop()
            await server.close_all_connections()

    head, body = asyncio.run(asyncio.wait_for(main(), 20))
    r = Recording.results
    assert r["finished before"] is False and r["finished after"] is True, tornado_broke(
        "RequestHandler._finished", f"reads {r['finished before']}, {r['finished after']}")
    assert r["written before"] is False and r["written after flush"] is True, tornado_broke(
        "RequestHandler._headers_written", "does not say whether the headers went out")
    assert r["reason"] == "I'm a Teapot", tornado_broke("RequestHandler._reason",
                                                        f"is {r['reason']!r} for 418")
    assert r["tornado clear"] == {"_headers", "_write_buffer", "_status_code", "_reason"}, \
        tornado_broke("RequestHandler.clear", f"now assigns {sorted(r['tornado clear'])} "
                      "(tornado_compat.reset_response must do what it does)")
    assert r["tornado headers"] == ["Content-Type", "Date", "Server"], tornado_broke(
        "RequestHandler.clear", f"now sets the headers {r['tornado headers']} "
        "(gateway.handlers.base.BaseAPIHandler.clear sets the same)")
    assert r["compat clear"] == r["tornado clear"]
    assert r["after reset"] == (200, "OK", [])
    assert head.startswith(b"HTTP/1.1 200 OK") and b"X-Mine: 1" in head, tornado_broke(
        "RequestHandler._headers", f"is not what the response's headers are: {head!r}")
    assert body == b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n", body


# -- mongoeco ---------------------------------------------------------------------------
def test_the_mongoeco_methods_patched_exist_with_their_keyword():
    problems = mongoeco_compat.payload_id_check_problems()
    assert not problems, mongoeco_broke(
        "scan_payload_id", "cannot be turned off: " + "; ".join(problems))


@pytest.fixture
def unpatched_engines(monkeypatch):
    """The engines as mongoeco ships them; the patch (if applied in the test) is undone
    at teardown. Spies count each whole-collection scan's documents."""
    from mongoeco.engines.memory import MemoryEngine
    from mongoeco.engines.sqlite import SQLiteEngine
    for module, cls_name, name in mongoeco_compat.PAYLOAD_ID_CHECKS:
        cls = {"SQLiteEngine": SQLiteEngine, "MemoryEngine": MemoryEngine}[cls_name]
        method = getattr(cls, name)
        monkeypatch.setattr(cls, name, getattr(method, "__wrapped__", method))
    scans = {"n": 0}
    for cls, name in ((SQLiteEngine, "_load_documents"),
                      (MemoryEngine, "_borrow_storage_document")):
        original = getattr(cls, name, None)
        assert original is not None, mongoeco_broke(f"{cls.__name__}.{name}", "is gone "
                                                    "(this test counts scans with it)")

        def spy(self, *args, _original=original, **kwargs):
            scans["n"] += 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, spy)
    return {"memory": MemoryEngine, "sqlite": lambda: SQLiteEngine(":memory:")}, scans


def insert_scans(engine, scans) -> dict:
    """How many scans each kind of insert makes in a 40-document collection, and whether
    duplicate ids (same and equal-by-value) are still refused."""
    from mongoeco.errors import DuplicateKeyError
    client = mongoeco.MongoClient(engine())
    try:
        coll = client.db.c
        coll.insert_many([{"_id": f"k{i}"} for i in range(40)] + [{"_id": 1}])
        out = {}
        for kind, doc in (("string", {"_id": "new"}), ("number", {"_id": 2})):
            scans["n"] = 0
            coll.insert_one(doc)
            out[kind] = scans["n"]
        for kind, doc in (("dup string", {"_id": "new"}), ("dup number", {"_id": 1.0})):
            try:
                coll.insert_one(doc)
                out[kind] = "accepted"
            except DuplicateKeyError:
                out[kind] = "refused"
        return out
    finally:
        client.close()


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
def test_skip_payload_id_scan_drops_the_scan_for_string_ids_only(engine, unpatched_engines):
    engines, scans = unpatched_engines
    before = insert_scans(engines[engine], scans)
    internal = {"memory": "MemoryEngine._ensure_unique_indexes",
                "sqlite": "SQLiteEngine._validate_document_against_unique_indexes"}[engine]
    assert before["string"] > 0, mongoeco_broke(
        internal, "no longer scans the collection for a string id: the patch may be "
        "unneeded; check and remove it")
    assert mongoeco_compat.skip_payload_id_scan() == []
    assert mongoeco_compat.skip_payload_id_scan() == []   # idempotent
    after = insert_scans(engines[engine], scans)
    assert after["string"] == 0, mongoeco_broke(
        internal, f"with scan_payload_id=False still scans ({after['string']})")
    assert after["number"] > 0, mongoeco_broke(
        internal, "no longer scans for a numeric id (1 == 1.0) once scan_payload_id=False")
    assert before["dup string"] == after["dup string"] == "refused"
    assert after["dup number"] == "refused", mongoeco_broke(
        internal, "accepts 1.0 next to 1 once scan_payload_id=False")


def test_the_embedded_database_applies_the_patch(tmp_path):
    """The launcher's child process says nothing on stderr about the patch when it applies."""
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from gateway.store import embedded_db, "
         "mongoeco_compat as m; embedded_db._skip_payload_id_scan(); "
         "from mongoeco.engines.sqlite import SQLiteEngine as S; "
         "print(getattr(S._validate_document_against_unique_indexes, '_ayct_patched', 0))"],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True" and proc.stderr == "", (proc.stdout, proc.stderr)


def test_an_unpatchable_mongoeco_is_reported_not_broken(monkeypatch, capsys):
    """A method without the keyword is left alone (patching it would break every insert)
    and the launcher says so on stderr, naming it and the tested version."""
    from mongoeco.engines.memory import MemoryEngine
    from mongoeco.engines.sqlite import SQLiteEngine
    name = "_validate_document_against_unique_indexes"
    monkeypatch.setattr(SQLiteEngine, name, getattr(SQLiteEngine, name))   # undone after

    def no_keyword(self, db_name, coll_name, candidate):
        return None
    monkeypatch.setattr(MemoryEngine, "_ensure_unique_indexes", no_keyword)
    from gateway.store import embedded_db
    embedded_db._skip_payload_id_scan()
    assert MemoryEngine._ensure_unique_indexes is no_keyword
    err = capsys.readouterr().err
    assert "MemoryEngine._ensure_unique_indexes has no keyword-only `scan_payload_id`" \
        in err and f"tested with {mongoeco_compat.tested_version()}" in err, err


def test_io_stream_class_is_what_the_guard_checks():
    """gateway.http.guard leaves streams whose class has its own set_nodelay alone."""
    assert "set_nodelay" in vars(IOStream), tornado_broke("IOStream.set_nodelay",
                                                          "is no longer defined by IOStream")
