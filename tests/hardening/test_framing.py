"""HTTP framing attacks (issue 22: security 1, 2, 8 and the HEAD item of 6), over real
TCP against a real gateway: duplicate or conflicting body lengths are refused at once,
the body limit holds whatever the header form, a chunked body's cost is bounded per body
(not per byte), a refusal that says ``Connection: close`` closes, header padding counts,
and a refused ``HEAD`` gets an answer without a body."""
from __future__ import annotations

import json
import select
import socket
import threading
import time

import httpx
import pytest

from tests.hardening.conftest import OK, sections
from tests.hardening.rawhttp import connect, exchange, json_error, read_response
from tests.inprocess import start_inprocess

LIMIT = 4096
HEADER_LIMIT = 8192
POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def small_gw(mongo, tmp_path_factory):
    """Small limits (4 KiB bodies, 8 KiB headers), in-process."""
    gw = start_inprocess(tmp_path_factory.mktemp("framing"), mongo.uri, sections(
        max_body_bytes=LIMIT, max_header_bytes=HEADER_LIMIT, header_timeout=2.0,
        body_timeout=2.0))
    gw.key = gw.create_key("framing@example.com")
    yield gw
    gw.stop()


def closed_by_server(sock: socket.socket, within: float = 5.0) -> bool:
    """Whether the server closes ``sock`` (after what it already sent) within ``within``
    seconds, without sending anything more."""
    sock.settimeout(within)
    try:
        rest = sock.recv(65536)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert rest == b"", f"more after the response: {rest[:200]!r}"
    return True


def send_until_answered(sock: socket.socket, head: bytes, body_size: int,
                        block: bytes = b"x" * 65536) -> tuple[int, int]:
    """Send ``head`` and then up to ``body_size`` bytes of body, stopping as soon as the
    server answers. Returns (bytes of body sent, status of the answer)."""
    sock.sendall(head)
    sent = 0
    while sent < body_size:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(block[:body_size - sent])
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += min(len(block), body_size - sent)
    status, headers, body = read_response(sock)
    assert headers.get("connection") == "close", headers
    if status >= 400:
        json_error(body)
    return sent, status


# -- item 1: duplicate or conflicting framing, and the limit whatever the form ------------

@pytest.mark.parametrize("framing", [
    b"Content-Length: 60000000\r\nContent-Length: 60000000\r\n",
    b"Content-Length: 60000000, 60000000\r\n",
    b"Content-Length: 60000000,60000000\r\n",
    b"Content-Length: 5\r\nContent-Length: 60000000\r\n",
    b"Content-Length: 2\r\nContent-Length: 2\r\n",
    b"Content-Length: 60000000\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
    b"Content-Length: +60000000\r\n",
    b"Content-Length: 60000000 60000000\r\n",
    b"Content-Length: 0x10\r\n",
    b"Content-Length: \xb2\r\n",                          # a Latin-1 superscript digit
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
], ids=["cl_twice", "cl_list", "cl_list_nospace", "cl_unequal", "cl_small_twice", "cl_te",
        "te_cl", "cl_plus", "cl_space_list", "cl_hex", "cl_superscript", "te_twice",
        "te_list", "te_gzip", "te_identity"])
def test_ambiguous_framing_is_refused_at_once(small_gw, framing):
    """400 ``invalid_framing`` before any body byte is sent, ``Connection: close``, and
    the connection closes (before: a duplicate 60 MB Content-Length was read whole and
    buffered, and only then refused)."""
    with connect(small_gw, timeout=10) as sock:
        sock.sendall(POST + framing + b"\r\n")
        status, headers, body = read_response(sock)
        assert status == 400, (status, body[:200])
        assert headers["connection"] == "close" and headers["content-type"] == \
            "application/json"
        err = json_error(body)
        assert err["code"] == "invalid_framing" and err["type"] == "invalid_request_error"
        assert closed_by_server(sock)
    # The gateway is fine, keep-alive included.
    with httpx.Client(timeout=30) as client:
        for _ in range(2):
            resp = client.post(small_gw.url + "/v1/chat/completions", json=OK,
                               headers={"Authorization": f"Bearer {small_gw.key}"})
            assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("length", [b"0" * 5000 + b"60000000", b"   60000000  ",
                                    b"\t60000000", b"00000000000060000000"],
                         ids=["5000_zeros", "blanks", "tab", "zeros"])
def test_the_body_limit_holds_whatever_the_header_form(small_gw, length):
    """413 as soon as the headers are in, whatever the blanks or leading zeros (5,000
    leading zeros got no answer: past Python's int() digit limit)."""
    with connect(small_gw, timeout=10) as sock:
        sent, status = send_until_answered(
            sock, POST + b"Content-Length:" + length + b"\r\n\r\n", 60_000_000)
        assert status == 413 and sent < 60_000_000


def test_a_duplicate_length_upload_is_answered_before_it_is_sent(small_gw):
    """The issue's request: two equal 60 MB lengths, the body streaming in. The answer
    comes while the client is still sending, and the client can read it."""
    with connect(small_gw, timeout=10) as sock:
        sent, status = send_until_answered(
            sock, POST + b"Content-Length: 60000000\r\nContent-Length: 60000000\r\n\r\n",
            60_000_000)
        assert status == 400 and sent < 60_000_000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_eight_duplicate_length_uploads_do_not_grow_the_gateway(hard_gw):
    """8 connections each declaring ``Content-Length: 60000000`` twice and sending the
    60 MB: the gateway's memory grows by less than 50 MB (before: 355 -> 927 MB in the
    issue, 68 -> 615 MB here)."""
    pid = hard_gw.proc.pid
    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.02)

    results: list = []

    def upload() -> None:
        with connect(hard_gw, timeout=60) as sock:
            results.append(send_until_answered(
                sock, POST + b"Content-Length: 60000000\r\nContent-Length: 60000000\r\n\r\n",
                60_000_000))

    sampler = threading.Thread(target=sample)
    sampler.start()
    uploads = [threading.Thread(target=upload) for _ in range(8)]
    for t in uploads:
        t.start()
    for t in uploads:
        t.join(120)
    time.sleep(0.5)
    done.set()
    sampler.join()
    print(f"gateway RSS {before:.0f} MB, peak {peak[0]:.0f} MB under 8 duplicate-length "
          f"uploads; body sent before the answer: {sorted(s for s, _ in results)}")
    assert [status for _, status in results] == [400] * 8
    assert peak[0] - before < 50, (before, peak[0])


# -- item 2: a chunked body's cost is per body, not per byte ----------------------------

def test_a_body_in_tiny_chunks_is_refused_past_the_chunk_cap(hard_gw):
    """1 MB of 1-byte chunks (``1\\r\\n \\r\\n`` x 166,666, 166 KB of data, under the 1 MiB
    limit): 413 past the chunk cap, the rest discarded unparsed, then the close (before:
    1.85 s of gateway CPU per such body, and the body went on to the handler)."""
    head = POST + b"Transfer-Encoding: chunked\r\n\r\n"
    with connect(hard_gw, timeout=30) as sock:
        sent, status = send_until_answered(sock, head, 1_000_002,
                                           block=b"1\r\n \r\n" * 10922)
        assert status == 413
    with connect(hard_gw, timeout=30) as sock:   # sent whole, then read
        sock.sendall(head + b"1\r\n \r\n" * 166_666 + b"0\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 413 and headers["connection"] == "close"
        err = json_error(body)
        assert err["code"] == "request_too_large" and "chunks" in err["message"]
        assert closed_by_server(sock)


    # A body of small chunks under the cap is an ordinary request.
    raw = json.dumps(OK).encode()
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(raw[i:i + 1]), raw[i:i + 1])
                      for i in range(len(raw)))
    with connect(hard_gw, timeout=30) as sock:
        sock.sendall(POST + b"Authorization: Bearer " + hard_gw.key.encode() +
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200, body[:300]
        assert json.loads(body)["choices"][0]["message"]["content"]


def test_a_chunked_body_over_the_size_limit_is_not_parsed_to_its_end(small_gw):
    """Refused for its size, the rest of a tiny-chunk body is discarded without being
    parsed chunk by chunk: the answer and the close come at once."""
    with connect(small_gw, timeout=10) as sock:
        sock.sendall(POST + b"Transfer-Encoding: chunked\r\n\r\n" +
                     b"1000\r\n" + b"x" * 4096 + b"\r\n")
        sock.sendall(b"1\r\n \r\n" * 1_000_000 + b"0\r\n\r\n")   # 19 s to parse before
        status, headers, body = read_response(sock)
        assert status == 413 and json_error(body)["code"] == "request_too_large"
        assert closed_by_server(sock)


# -- item 3: a refusal that says Connection: close closes; header padding counts --------

@pytest.mark.parametrize("first", [
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * HEADER_LIMIT) + b"\r\n\r\n",
    POST + b"Content-Length: 5000\r\n\r\n" + b"x" * 5000,
], ids=["431", "413"])
def test_no_request_is_served_after_a_refusal_that_closes(small_gw, first):
    """A pipelined request after a 431 or 413 (``Connection: close``) is not served."""
    with connect(small_gw, timeout=10) as sock:
        sock.sendall(first + b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(sock)
        assert status in (413, 431) and headers["connection"] == "close"
        assert closed_by_server(sock)


@pytest.mark.parametrize("gw_name, value, status", [
    ("hard_gw", b" " * 200_000 + b"x", 431),      # the default limit: 64 KiB
    ("hard_gw", b"x" + b" " * 200_000, 431),
    ("small_gw", b" " * 20_000 + b"x", 431),      # 8 KiB
    ("small_gw", b"x" + b"\t" * 20_000, 431),
], ids=["default_leading", "default_trailing", "small_leading",
        "small_trailing"])
def test_header_padding_counts_against_the_header_limit(request, gw_name, value, status):
    """Blanks padding one header count: 431 past the limit (it counted the stripped
    values, so 200,000 spaces passed). Under the limit, padding is no problem."""
    gw = request.getfixturevalue(gw_name)
    if gw_name == "hard_gw":
        got, _, body = exchange(gw, (
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
            gw.key.encode() + b"\r\nX-Pad: x" + b"\t" * 30_000 + b"\r\n\r\n"))
        assert got == 200, body[:300]
    got, headers, body = exchange(gw, (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
        gw.key.encode() + b"\r\nX-Pad: " + value + b"\r\n\r\n"))
    assert got == status, body[:300]
    if status == 431:
        assert headers["connection"] == "close"
        assert json_error(body)["code"] == "headers_too_large"


# -- item 4: HEAD ------------------------------------------------------------------------

def test_a_refused_head_request_gets_headers_and_no_body(hard_gw):
    """``HEAD /v1/chat/completions`` with ``Content-Length: 2000000``: a 413 without a
    body (before: no answer, and "Uncaught exception ... HTTPOutputError" in the log)."""
    with connect(hard_gw, timeout=10) as sock:
        sock.sendall(b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 2000000\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            assert part, f"closed without an answer: {data!r}"
            data += part
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 413 ") and b"\r\nConnection: close" in head
        assert rest == b""
        sock.sendall(b"y" * 2_000_000)   # the body it declared: read, discarded, closed
        assert closed_by_server(sock, 10)
    # Small enough to be read: the application answers HEAD (no body, no error logged).
    with connect(hard_gw, timeout=10) as sock:
        sock.sendall(b"HEAD /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        sock.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            part = sock.recv(65536)
            assert part, f"closed without an answer: {data!r}"
            data += part
        assert data.startswith(b"HTTP/1.1 4") and data.endswith(b"\r\n\r\n"), data[:300]
    time.sleep(0.3)
    log = hard_gw.log()
    assert "Uncaught exception" not in log and "HTTPOutputError" not in log
