"""Fuzzing the upstream client's response parser (plugins/backends/http_response.py) on
its own, without a socket: arbitrary bytes and mangled responses never raise anything
but ``BadResponse`` and give the same result whole or split anywhere; well-formed
responses (every framing, 1xx interim answers, chunk extensions, trailers) parse to
the body and status they were made from, split at any points. Fixed seed, bounded
examples: the same cases run every time."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugins.backends.http_response import BadResponse, ResponseParser
from plugins.backends.upstream_http import BadResponse as ClientBadResponse

FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def parse(pieces, head_only=False):
    """Feed the pieces then the end of the stream; the outcome as a comparable tuple."""
    parser = ResponseParser()
    parser.start(head_only)
    try:
        for piece in pieces:
            parser.data_received(piece)
        parser.eof_received()
    except BadResponse:
        return ("error",)
    return (parser.status, parser.content_type, parser.keep_alive, parser.done,
            parser.body)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


# -- well-formed responses -------------------------------------------------------------

@st.composite
def responses(draw):
    """(wire bytes, status, content type, body, keep-alive) of a well-formed response."""
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    status = draw(st.sampled_from([200, 201, 400, 404, 429, 500, 503]))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    body = draw(st.binary(max_size=600))
    ctype = draw(st.sampled_from(["", "text/event-stream", "application/json"]))
    close = draw(st.booleans())
    wire = b""
    for _ in range(draw(st.integers(0, 2))):     # interim answers, skipped
        wire += draw(st.sampled_from([b"HTTP/1.1 100 Continue\r\n\r\n",
                                      b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]))
    head = [version + b" %d Reason Phrase" % status]
    if ctype:
        head.append(b"Content-Type: " + ctype.encode())
    head.append(b"X-Other: " + draw(st.binary(max_size=20)).replace(b"\r", b"")
                .replace(b"\n", b""))
    if close:
        head.append(b"Connection: close")
    if framing == "length":
        head.append(b"content-length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        cuts = draw(st.lists(st.integers(0, len(body)), max_size=6))
        payload = b""
        for piece in split(body, cuts):
            if piece:
                ext = draw(st.sampled_from([b"", b";name=value", b" ; x"]))
                payload += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        payload += b"0\r\n"
        if draw(st.booleans()):
            payload += b"Trailer-Field: x\r\n"
        payload += b"\r\n"
    else:
        payload = body
    wire += b"\r\n".join(head) + b"\r\n\r\n" + payload
    keep_alive = framing != "close" and not close and version == b"HTTP/1.1"
    return wire, status, ctype, body, keep_alive


@FUZZ
@given(responses(), st.lists(st.integers(0, 10_000), max_size=12))
def test_well_formed_responses_parse_the_same_split_anywhere(response, cuts):
    wire, status, ctype, body, keep_alive = response
    expected = (status, ctype, keep_alive, True, body)
    assert parse([wire]) == expected
    assert parse(split(wire, cuts)) == expected


@FUZZ
@given(responses())
def test_well_formed_responses_parse_the_same_byte_by_byte(response):
    wire, status, ctype, body, keep_alive = response
    assert parse([wire[i:i + 1] for i in range(len(wire))]) == (status, ctype, keep_alive,
                                                                  True, body)


def test_head_204_and_304_have_no_body():
    for wire, head_only in [(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", True),
                            (b"HTTP/1.1 204 No Content\r\n\r\n", False),
                            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", False)]:
        status = int(wire[9:12])
        assert parse([wire], head_only) == (status, "", True, True, b"")


# -- bytes that are not (quite) a response --------------------------------------------

def mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, byte in edits:
        if not out:
            out.append(byte)
            continue
        i = where % len(out)
        if kind == 0:
            out[i] = byte
        elif kind == 1:
            del out[i]
        else:
            out.insert(i, byte)
    return bytes(out)


interesting = st.sampled_from(b"\r\n:; 0123456789abcdefxHTP/.-+_\x00\xff")
edits = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10_000),
                           st.one_of(interesting, st.integers(0, 255))), min_size=1,
                 max_size=6)


@FUZZ
@given(st.one_of(st.binary(max_size=400),
                 responses().flatmap(lambda r: edits.map(lambda e: mutate(r[0], e)))),
       st.lists(st.integers(0, 10_000), max_size=12), st.booleans())
def test_any_bytes_raise_only_bad_response_and_split_the_same_as_whole(data, cuts, head_only):
    whole = parse([data], head_only)      # anything but BadResponse propagates: a failure
    assert parse(split(data, cuts), head_only) == whole
    assert parse([data[i:i + 1] for i in range(len(data))], head_only) == whole


def test_framing_errors_are_bad_response_and_it_is_the_clients_error():
    assert ClientBadResponse is BadResponse and issubclass(BadResponse, ConnectionError)
    bad = [b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
           b"HTTP/1.1 2000 OK\r\n\r\n",
           b"HTTP/1.1 +20 OK\r\n\r\n",
           b"HTTP/2 200\r\n\r\n",
           b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
           b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
           b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n",
           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
           b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000,
           b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",            # cut short
           b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000]                     # head too large
    for data in bad:
        assert parse([data]) == ("error",), data


@pytest.mark.parametrize("extra", [b"x", b"HTTP/1.1 200 OK\r\n\r\n"])
def test_bytes_after_the_end_forbid_reuse(extra):
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert parse([wire + extra])[2] is False
    assert parse([wire, extra])[2] is False
    assert parse([wire])[2] is True
