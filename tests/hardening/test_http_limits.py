"""Slow and oversized clients (issue 9, item 5): body/header timeouts, 413/431 JSON
errors instead of dropped connections, JSON bodies for Tornado's own 400s, and
WebSocket close code 1007 for invalid UTF-8."""
from __future__ import annotations

import os
import socket
import struct
import time

import httpx
import pytest

from tests.hardening.conftest import OK, assert_json_error, sections
from tests.hardening.rawhttp import connect, exchange, json_error, read_response
from tests.inprocess import start_inprocess
from tests.ws.rawsocket import RawSocket

LIMIT = 4096
HEADER_LIMIT = 8192


@pytest.fixture(scope="module")
def small_gw(mongo, tmp_path_factory):
    """Small limits and short timeouts, so the tests need not wait long (in-process)."""
    gw = start_inprocess(tmp_path_factory.mktemp("limits"), mongo.uri, sections(
        max_body_bytes=LIMIT, max_header_bytes=HEADER_LIMIT, header_timeout=1.0,
        body_timeout=1.0))
    gw.key = gw.create_key("limits@example.com")
    yield gw
    gw.stop()


def auth(gw) -> dict:
    return {"Authorization": f"Bearer {gw.key}"}


def test_a_body_far_over_the_limit_gets_a_413_json_error(small_gw):
    """5 MB against a 4 KiB limit: an answer, not a dropped connection."""
    resp = httpx.post(small_gw.url + "/v1/chat/completions", content=b"x" * 5_000_000,
                      headers=auth(small_gw), timeout=30)
    assert_json_error(resp, 413, "request_too_large")
    # ...also on routes that are not the API, and just over the limit; a browser gets HTML.
    resp = httpx.post(small_gw.url + "/dashboard/login", content=b"a" * (LIMIT + 1), timeout=30)
    assert_json_error(resp, 413, "request_too_large")
    resp = httpx.post(small_gw.url + "/dashboard/login", content=b"a" * (LIMIT + 1), timeout=30,
                      headers={"Accept": "text/html,*/*"})
    assert resp.status_code == 413 and resp.headers["content-type"].startswith("text/html")
    assert "Request body too large" in resp.text
    ok = httpx.post(small_gw.url + "/v1/chat/completions", json=OK, headers=auth(small_gw))
    assert ok.status_code == 200, ok.text


def test_a_chunked_body_over_the_limit_gets_a_413(small_gw):
    """2 MB without a Content-Length (Tornado dropped chunked bodies over 1 MiB)."""
    def chunks():
        for _ in range(2000):
            yield b"y" * 1000
    resp = httpx.post(small_gw.url + "/v1/chat/completions", content=chunks(),
                      headers=auth(small_gw), timeout=30)
    assert_json_error(resp, 413, "request_too_large")


def test_a_huge_declared_body_is_refused_before_it_is_sent(small_gw):
    """With Expect: 100-continue the client never has to send the gigabyte."""
    status, headers, body = exchange(small_gw, (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n"
        b"Expect: 100-continue\r\nContent-Type: application/json\r\n\r\n"))
    assert status == 413 and headers["connection"] == "close"
    assert json_error(body)["code"] == "request_too_large"


def test_headers_over_the_limit_get_a_431_json_error(small_gw, hard_gw):
    status, _, body = exchange(small_gw, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n"
                               b"X-Big: " + b"a" * (2 * HEADER_LIMIT) + b"\r\n\r\n")
    assert status == 431 and json_error(body)["code"] == "headers_too_large"
    # The default limit is 64 KiB: 80 KB of cookies got the connection dropped before.
    resp = httpx.get(hard_gw.url + "/v1/models", timeout=30,
                     headers={"Cookie": "; ".join(f"c{i}={'v' * 70}" for i in range(1100))})
    assert_json_error(resp, 431, "headers_too_large")


@pytest.mark.parametrize("raw, code", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n", "malformed_request"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", "malformed_request"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n",
     "invalid_framing"),   # the guard's own answer (tests/hardening/test_framing.py)
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", "malformed_request"),
], ids=["control_char", "space_in_name", "bad_content_length", "no_colon"])
def test_tornado_parse_errors_have_a_json_body(small_gw, raw, code):
    status, headers, body = exchange(small_gw, raw)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json_error(body)["code"] == code


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_stalled_bodies_get_a_408_and_stalled_headers_are_cut_off(small_gw):
    """100 clients stop mid-body and 100 mid-headers: after the timeouts (1 s here) the
    first get a 408 JSON error and all are closed; before, every one of them was held
    (for an hour)."""
    stalled = []
    for i in range(200):
        sock = connect(small_gw)
        if i % 2:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"{" * 10)
        else:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled.append(sock)
    started = time.monotonic()
    for i, sock in enumerate(stalled):
        sock.settimeout(max(0.1, started + 6 - time.monotonic()))
        if i % 2:
            status, headers, body = read_response(sock)
            assert status == 408 and json_error(body)["code"] == "body_timeout"
        assert _closed_by_server(sock, max(0.1, started + 6 - time.monotonic())), i
        sock.close()
    # A client that keeps to the timeouts is served as usual, keep-alive included.
    with httpx.Client(timeout=30) as client:
        for _ in range(3):
            assert client.get(small_gw.url + "/v1/models", headers=auth(small_gw)) \
                .status_code == 200


def _text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_invalid_utf8_in_a_websocket_text_frame_closes_with_1007(small_gw):
    """RFC 6455: 1007 with a close frame (before: the socket was dropped, i.e. 1006)."""
    ws = RawSocket(small_gw)
    assert ws.status == 101
    opcode, payload = ws.read_frame()
    assert opcode == 0x1 and b'"ready"' in payload
    ws.sock.sendall(_text_frame(b'{"type":"ping","id":"\xff\xfe"}'))
    opcode, payload = ws.read_frame()
    assert opcode == 0x8, (opcode, payload)
    assert struct.unpack("!H", payload[:2])[0] == 1007
    ws.close()
    # A valid frame on a new socket still works.
    ws = RawSocket(small_gw)
    ws.read_frame()
    ws.send_json({"type": "ping", "id": "p"})
    assert ws.read_frame() == (0x1, b'{"type":"pong","id":"p"}')
    ws.close()
