"""Request headers parsed with one regular expression instead of several per line.

Tornado's ``HTTP1Connection`` header parser splits the header block into lines and, for
each line, runs a regular-expression search for its end, full matches of the name and of
the value against RFC 9110's rules, and Http-Header-Case normalisation three times (five
to seven Python calls per header): about 40 µs for the seven headers of a usual API
request, on the path to the first token.

:class:`FastHeaderConnection` (what :class:`gateway.http.guard.RequestGuard` makes of each
server-side ``HTTP1Connection``) checks the whole block against those same rules with one
compiled pattern and then builds the same ``HTTPHeaders`` (names normalised, repeated
headers kept in order, values stripped of spaces and tabs). A block the pattern does not
accept (bare LF line ends, folded lines, characters outside the rules) goes to Tornado's
own parser unchanged, which accepts or refuses it as before. It also keeps the size of
the raw header block (``header_bytes``: padding included, which the parsed values lose)
for the guard's 431, and reads chunked bodies as Tornado does but with a cap on the
number of chunks (``max_chunks``) and, once the guard has refused the request
(``discard_body``), by plain reads that no longer parse the chunks.
"""
from __future__ import annotations

import asyncio
import re

from tornado import httputil
from tornado.http1connection import HTTP1Connection

from gateway.http import tornado_compat
from gateway.http.tornado_compat import RequestHeaders

_normalize = tornado_compat.normalize_header   # Tornado's own (cached) normalisation

_VCHAR = r"[\x21-\x7e\x80-\xff]"           # field-vchar: VCHAR / obs-text
_CLEAN_BLOCK = re.compile(
    r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ \t]*"            # field-name ":" OWS
    rf"(?:{_VCHAR}(?:[\x21-\x7e\x80-\xff \t]*{_VCHAR})?)?"  # field-value
    r"[ \t]*\r\n)*\r\n")                                  # OWS CRLF ... CRLF


def parse_headers(data: bytes) -> tuple[str, httputil.HTTPHeaders] | None:
    """(start line, headers) as Tornado's parser returns them, or None when
    the block is not plain CRLF-terminated lines that follow the rules (then Tornado's
    parser decides)."""
    text = data.decode("latin1").lstrip("\r\n")
    lf = text.find("\n")
    if lf < 1 or text[lf - 1] != "\r":
        return None
    start_line = text[:lf - 1]
    if start_line.endswith("\r"):
        return None
    block = text[lf + 1:]
    if _CLEAN_BLOCK.fullmatch(block) is None:
        return None
    headers = RequestHeaders()
    if len(block) > 2:
        as_list, combined = tornado_compat.header_maps(headers)
        for line in block[:-4].split("\r\n"):
            name, _, value = line.partition(":")
            name = _normalize(name)
            value = value.strip(" \t")
            values = as_list.get(name)
            if values is None:
                as_list[name] = [value]
                combined[name] = value
            else:
                combined.pop(name, None)
                values.append(value)
    return start_line, headers


_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
_YIELD_EVERY = 256 * 1024     # bytes of work between two event-loop yields (as Tornado)
_CHUNK_COST = 1024            # what one chunk counts as, in those bytes (as Tornado)


class FastHeaderConnection(tornado_compat.HTTP1ConnectionHooks):
    """A server-side ``HTTP1Connection`` whose request headers are parsed by
    :func:`parse_headers` (Tornado's parser for anything it does not take).

    ``header_bytes`` is the size of the raw header block of the request (request line
    and padding included). A chunked request body of more than ``max_chunks`` chunks
    calls its delegate's ``too_many_chunks()`` (which answers the request; a delegate
    without one gets a 400) and is then discarded; so is the rest of any body once
    ``discard_body`` is set."""

    header_bytes = 0
    max_chunks: int | None = None
    discard_body = False

    def parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        self.header_bytes = len(data)
        return parse_headers(data) or super().parse_headers(data)

    async def read_chunked_body(self, delegate: httputil.HTTPMessageDelegate) -> None:
        """Tornado's chunked body reader (same framing rules, same coalescing of small
        chunks, same yields), with the chunk cap and the discarding: its cost was per
        chunk (about 19 us each), so 1-byte chunks made a body cost per byte."""
        stream, size = self.stream, self.params.chunk_size
        total = chunks = work = 0
        pending = bytearray()

        async def read(future):
            if pending and not future.done():   # deliver what we have before waiting
                data = bytes(pending)
                pending.clear()
                await self.deliver_body(delegate, data)
            return await future

        while True:
            if self.discard_body:
                return await self._discard_rest(delegate, pending)
            work += _CHUNK_COST
            if work >= _YIELD_EVERY:
                work = 0
                await asyncio.sleep(0)
            line = await read(stream.read_until(b"\r\n", max_bytes=64))
            if _HEX.fullmatch(line, 0, len(line) - 2) is None:
                raise httputil.HTTPInputError("invalid chunk size")
            length = int(line[:-2], 16)
            if length == 0:
                if await read(stream.read_bytes(2)) != b"\r\n":
                    raise httputil.HTTPInputError("improperly terminated chunked request")
                if pending:
                    await self.deliver_body(delegate, bytes(pending))
                return
            chunks += 1
            if self.max_chunks is not None and chunks > self.max_chunks \
                    and not self.discard_body:
                refuse = getattr(delegate, "too_many_chunks", None)
                if refuse is None:
                    raise httputil.HTTPInputError("too many chunks")
                pending.clear()
                self.discard_body = True
                refuse()
                continue
            total += length
            if total > self.body_size_limit:
                raise httputil.HTTPInputError("chunked body too large")
            left = length
            while left:
                chunk = await read(stream.read_bytes(min(left, size), partial=True))
                left -= len(chunk)
                if not pending and len(chunk) == size:
                    await self.deliver_body(delegate, chunk)
                else:
                    pending += chunk
                    if len(pending) >= size:
                        data = bytes(pending[:size])
                        del pending[:size]
                        await self.deliver_body(delegate, data)
                work += len(chunk)
                if work >= _YIELD_EVERY:
                    work = 0
                    await asyncio.sleep(0)
            if await read(stream.read_bytes(2)) != b"\r\n":
                raise httputil.HTTPInputError("improperly terminated chunk")

    async def _discard_rest(self, delegate: httputil.HTTPMessageDelegate,
                            pending: bytearray) -> None:
        """The request was refused: read what the client still sends in plain blocks
        (no chunk parsing; the delegate counts them and ends the connection past its
        limit) until what looks like the end of a chunked body. The connection closes
        after the answer, so reading past the body costs nothing."""
        pending.clear()
        tail = b""
        work = 0
        while True:
            data = await self.stream.read_bytes(self.params.chunk_size, partial=True)
            await self.deliver_body(delegate, data)
            tail = (tail + data)[-7:]
            if tail.endswith(b"\r\n0\r\n\r\n") or tail == b"0\r\n\r\n":
                return
            work += len(data)
            if work >= _YIELD_EVERY:
                work = 0
                await asyncio.sleep(0)


def speed_up(conn: object) -> None:
    """Make a new server-side ``HTTP1Connection`` a :class:`FastHeaderConnection`
    (connections of any other class are left alone)."""
    if type(conn) is HTTP1Connection:
        conn.__class__ = FastHeaderConnection
