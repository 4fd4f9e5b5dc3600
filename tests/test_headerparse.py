"""gateway.http.headerparse gives exactly what Tornado's header parser gives, or leaves the
block to it (which then accepts or refuses it as before)."""
from __future__ import annotations

import random

import pytest
from tornado import httputil
from tornado.http1connection import HTTP1Connection

from gateway.http.headerparse import FastHeaderConnection, parse_headers, speed_up


def tornado_parse(data: bytes):
    """Tornado's own parser: (start line, [(name, value)...]) or the error's type."""
    try:
        start, headers = HTTP1Connection._parse_headers(None, data)
    except httputil.HTTPInputError as exc:
        return type(exc)
    return start, list(headers.get_all()), dict(headers)


def fast_parse(data: bytes):
    try:
        conn = FastHeaderConnection.__new__(FastHeaderConnection)
        start, headers = conn._parse_headers(data)
    except httputil.HTTPInputError as exc:
        return type(exc)
    return start, list(headers.get_all()), dict(headers)


USUAL = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8888\r\n"
         b"Authorization: Bearer ayct_abc\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
         b"User-Agent: Python/3.13 aiohttp/3.12\r\nContent-Length: 95\r\n"
         b"Content-Type: application/json\r\n\r\n")

CASES = [
    USUAL,
    b"GET / HTTP/1.1\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",                       # blank line first
    b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nX-A:3\r\n\r\n",          # repeated, any case
    b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Spaces: \t \r\n\r\n",          # empty values
    b"GET / HTTP/1.1\r\nX-Pad: \t a  b \t\r\n\r\n",                  # inner and outer blanks
    b"GET / HTTP/1.1\r\nX-Obs: caf\xe9\r\n\r\n",                       # obs-text
    b"GET / HTTP/1.1\r\nX-Colon: a:b: c\r\n\r\n",
    b"GET / HTTP/1.1\nHost: x\n\n",                                  # bare LF: Tornado's
    b"GET / HTTP/1.1\r\nHost: x\n\r\n",
    b"GET / HTTP/1.1\r\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",                 # folding: refused
    b"GET / HTTP/1.1\r\nBad Name: y\r\n\r\n",                         # refused
    b"GET / HTTP/1.1\r\nHost : y\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Ctl: a\x01b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Cr: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nX-Del: a\x7fb\r\n\r\n",
    b"GET / HTTP/1.1\r\n: novalue\r\n\r\n",
]


@pytest.mark.parametrize("data", CASES)
def test_same_result_as_tornado(data):
    assert fast_parse(data) == tornado_parse(data)


def test_usual_request_takes_the_fast_path():
    start, headers = parse_headers(USUAL)
    assert start == "POST /v1/chat/completions HTTP/1.1"
    assert headers["Content-Length"] == "95" and headers["authorization"] == "Bearer ayct_abc"
    assert parse_headers(b"GET / HTTP/1.1\nHost: x\n\n") is None   # left to Tornado


def test_random_blocks_same_result_as_tornado():
    rng = random.Random(7)
    names = [b"Host", b"x-y", b"A!#$%&'*+.^_`|~9", b"", b"Bad Name", b"N\xe9", b"K(", b" Lead"]
    seps = [b":", b": ", b":\t ", b"", b" :"]
    pieces = [b"a", b"Z", b" ", b"\t", b":", b"\xe9", b"/", b"\x00", b"\x7f", b"\r", b"\n", b"\x1f"]
    fast = 0
    for _ in range(4000):
        lines = [rng.choice(names) + rng.choice(seps)
                 + b"".join(rng.choice(pieces[:6] if rng.random() < 0.7 else pieces)
                            for _ in range(rng.randint(0, 6)))
                 for _ in range(rng.randint(0, 4))]
        data = b"GET / HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
        fast += parse_headers(data) is not None
        assert fast_parse(data) == tornado_parse(data), data
    assert fast > 100   # the fast path was taken often enough to mean something


def test_speed_up_only_plain_connections():
    class Other(HTTP1Connection):
        pass
    plain, other = HTTP1Connection.__new__(HTTP1Connection), Other.__new__(Other)
    speed_up(plain)
    speed_up(other)
    assert type(plain) is FastHeaderConnection and type(other) is Other


@pytest.mark.parametrize("data", [USUAL, b"GET / HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\nX-Empty:\r\n\r\n"])
def test_get_answers_as_tornados_headers_do(data):
    """RequestHeaders.get (a dictionary lookup) gives what HTTPHeaders.get gives, for
    present, repeated, empty and absent headers in any case, also after add()."""
    _, fast = parse_headers(data)
    _, slow = HTTP1Connection._parse_headers(None, data)
    names = ["Host", "host", "AUTHORIZATION", "Content-Length", "x-a", "X-Empty", "Accept",
             "Transfer-Encoding", "Expect", "X-Request-Id", "connection"]
    for _ in range(2):   # the second time from the combined-value cache
        assert [fast.get(n) for n in names] == [slow.get(n) for n in names]
        assert [fast.get(n, "d") for n in names] == [slow.get(n, "d") for n in names]
    fast.add("X-A", "3")
    slow.add("X-A", "3")
    assert fast.get("X-A") == slow.get("X-A")
