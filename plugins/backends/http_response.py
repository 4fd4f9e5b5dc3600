"""The HTTP/1.x response parser of the upstream client (``upstream_http``), without the
socket: status line and headers, then the body's framing (Content-Length, chunked, or
until the connection closes) removed. Kept apart so it can be fuzzed alone
(``tests/backends/test_http_response_fuzz.py``).

:class:`ResponseParser` is fed bytes as they arrive, split anywhere. What it found goes
to a few hooks that a subclass overrides; :class:`upstream_http.Connection` is that
subclass, so the parser's code runs on the socket's bytes with no call in between:

- ``_push(data)``: a piece of the body (Content-Length or until-close framing);
- ``_pushed(n)``: the chunked decoder appended ``n`` bytes of body to ``_body``;
- ``_wake()``: the head is complete, or the body ended;
- ``_fail(exc)``: the bytes are not a valid response (the base class raises ``exc``);
- ``_unexpected()``: bytes came when no response was expected (idle, or after the end).

On its own (``ResponseParser()``, ``start()``, ``data_received(...)`` as often as
bytes come, ``eof_received()`` when the peer closes) it collects the body in ``body``
and raises :class:`BadResponse` (a ``ConnectionError``), and only that, for anything it
cannot parse. A parsed response reads the same whole or split at any byte.

What it accepts: ``HTTP/1.0`` and ``HTTP/1.1`` status lines; 1xx interim responses are
skipped; ``Content-Length``, ``Transfer-Encoding: chunked`` (chunk extensions and
trailers ignored; a bare LF after chunk data tolerated) or a body up to the close;
``Connection: close``/``keep-alive``; HEAD, 204 and 304 have no body. It keeps only
the status, the Content-Type and whether the connection may be reused: no other header
is stored. No compression is decoded (the client asks for ``identity``).
"""
from __future__ import annotations

__all__ = ["MAX_CHUNK_LINE", "MAX_HEAD", "BadResponse", "ResponseParser"]

MAX_HEAD = 64 * 1024          # status line + headers
MAX_CHUNK_LINE = 4096         # a chunk-size line (with extensions), or a trailer line

# parser states
HEAD, LENGTH, CHUNKED, UNTIL_CLOSE, DONE, IDLE = range(6)


class BadResponse(ConnectionError):
    """The upstream's answer is not valid HTTP/1.x."""


_content_types: dict[bytes, str] = {}


def _content_type(value: bytes) -> str:
    """The header's value as a str, one shared object per distinct value (a few)."""
    text = _content_types.get(value)
    if text is None:
        text = value.decode("latin-1")
        if len(_content_types) < 64:
            _content_types[value] = text
    return text


class ResponseParser:
    """Incremental HTTP/1.x response parser; see the module docstring."""

    __slots__ = (
        "_body",
        "_buf",
        "_crlf",
        "_head_only",
        "_remaining",
        "_state",
        "_trailers",
        "content_type",
        "got_bytes",
        "keep_alive",
        "status",
    )

    def __init__(self) -> None:
        self.status = 0
        self.content_type = ""
        self.keep_alive = False
        self.got_bytes = False        # any byte of the current response arrived
        self._state = IDLE
        self._buf = b""               # bytes not parsed yet (head, chunk-size lines)
        self._remaining = 0           # body bytes left (Content-Length, or current chunk)
        self._crlf = False            # chunked: the CRLF after a chunk's data is due
        self._trailers = False        # chunked: the last chunk was seen; trailers follow
        self._body: list[bytes] = []  # decoded body bytes not taken yet
        self._head_only = False

    # -- use on its own ------------------------------------------------------------
    def start(self, head_only: bool = False) -> None:
        """Expect a new response (``head_only``: to a HEAD request, so without body)."""
        self.status, self.content_type = 0, ""
        self.got_bytes = False
        self._state, self._buf, self._head_only = HEAD, b"", head_only
        self._remaining = 0
        self._crlf = self._trailers = False

    @property
    def done(self) -> bool:
        """The whole response (head and body) was parsed."""
        return self._state == DONE

    @property
    def head_done(self) -> bool:
        return self._state not in (HEAD, IDLE)

    @property
    def body(self) -> bytes:
        """The body bytes decoded so far (and not taken by a subclass)."""
        return b"".join(self._body)

    def eof_received(self) -> None:
        """The peer closed: the end of an until-close body, else :class:`BadResponse`
        when a response was under way."""
        state = self._state
        if state == UNTIL_CLOSE:
            self._state = DONE
        elif state not in (DONE, IDLE):
            self._fail(BadResponse("the response ended before it was complete"))

    # -- hooks (a subclass handles them; see the module docstring) -------------------
    def _push(self, data: bytes) -> None:
        self._body.append(data)

    def _pushed(self, n: int) -> None:
        pass

    def _wake(self) -> None:
        pass

    def _fail(self, exc: BaseException) -> None:
        self.keep_alive = False
        raise exc

    def _unexpected(self) -> None:
        self.keep_alive = False

    # -- parsing ---------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == LENGTH and not self._buf:
            # the hot path: a piece of a Content-Length body
            n, remaining = len(data), self._remaining
            if n < remaining:
                self._remaining = remaining - n
                self._push(data)
                return
            if n > remaining:                      # more than declared: not reusable
                self.keep_alive = False
                data = data[:remaining]
            self._remaining = 0
            if data:
                self._push(data)
            self._state = DONE
            self._wake()
            return
        try:
            if state == CHUNKED:
                self._feed_chunked(data)
            elif state == HEAD:
                self.got_bytes = True
                self._feed_head(data)
            elif state == UNTIL_CLOSE:
                self._push(data)
            elif data:   # bytes nobody asked for (idle, or after the end): never reuse
                self._unexpected()
        except BadResponse as exc:
            self._fail(exc)

    def _feed_head(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0 or end > MAX_HEAD:
                if len(buf) > MAX_HEAD + 3:   # no head end can start within MAX_HEAD
                    raise BadResponse("response headers too large")
                self._buf = buf
                return
            head, buf = buf[:end], buf[end + 4:]
            lines = head.split(b"\r\n")
            status_line = lines[0].split(None, 2)
            if len(status_line) < 2 or status_line[0] not in (b"HTTP/1.1", b"HTTP/1.0"):
                raise BadResponse("not an HTTP/1.x response")
            code = status_line[1]
            if len(code) != 3 or not code.isdigit():
                raise BadResponse("bad status code")
            status = int(code)
            if 100 <= status < 200:                # 100 Continue, 103 Early Hints
                continue
            break
        length, chunked, keep_alive = None, False, status_line[0] == b"HTTP/1.1"
        content_type = ""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise BadResponse("malformed header line")
            name = name.strip().lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise BadResponse("bad Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower().endswith(b"chunked")
            elif name == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif name == b"content-type":
                content_type = _content_type(value.strip())
        self.status, self.content_type = status, content_type
        self._buf = b""
        if self._head_only or status in (204, 304):
            self.keep_alive = keep_alive and not buf
            self._state = DONE
            self._wake()
            return
        if chunked:
            self.keep_alive = keep_alive
            self._state, self._remaining = CHUNKED, 0
            self._crlf = self._trailers = False
            self._wake()
            if buf:
                self._feed_chunked(buf)
            return
        if length is not None:
            self.keep_alive = keep_alive
            self._state, self._remaining = LENGTH, length
            self._wake()
            if length == 0:
                self._state = DONE
                if buf:
                    self.keep_alive = False
            elif buf:
                self.data_received(buf)
            return
        self.keep_alive = False                   # the body ends when the connection does
        self._state = UNTIL_CLOSE
        self._wake()
        if buf:
            self._push(buf)

    def _feed_chunked(self, data: bytes) -> None:
        if self._buf:
            data, self._buf = self._buf + data, b""
        pos, n = 0, len(data)
        out = self._body
        added = 0
        while pos < n:
            remaining = self._remaining
            if remaining:                          # inside a chunk's data
                end = pos + remaining
                if end >= n:
                    piece = data[pos:] if pos else data
                    self._remaining = end - n
                    pos = n
                else:
                    piece = data[pos:end]
                    self._remaining = 0
                    pos = end
                out.append(piece)
                added += len(piece)
                if not self._remaining:
                    self._crlf = True
                continue
            if self._crlf:                         # the line end after a chunk's data
                if data[pos] == 0x0A:              # a bare LF: tolerated
                    pos += 1
                elif n - pos < 2:
                    break
                elif data[pos:pos + 2] == b"\r\n":
                    pos += 2
                else:
                    raise BadResponse("chunk not followed by CRLF")
                self._crlf = False
                continue
            eol = data.find(b"\n", pos)
            if eol < 0:
                if n - pos > MAX_CHUNK_LINE:
                    raise BadResponse("chunk size line too long")
                break
            if eol - pos > MAX_CHUNK_LINE:
                raise BadResponse("chunk size line too long")
            line = data[pos:eol]
            pos = eol + 1
            if self._trailers:                     # trailer lines, then an empty line
                if not line.strip():
                    self._state = DONE
                    if pos < n:                    # bytes after the response
                        self.keep_alive = False
                    pos = n
                    break
                continue
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadResponse("bad chunk size") from None
            if size < 0:
                raise BadResponse("bad chunk size")
            if size == 0:
                self._trailers = True
                continue
            end = pos + size
            if end + 2 <= n and data[end] == 0x0D and data[end + 1] == 0x0A:
                # the whole chunk and its CRLF are here (an SSE event, usually): taken in
                # this pass instead of two more
                out.append(data[pos:end])
                added += size
                pos = end + 2
            else:
                self._remaining = size
        if pos < n:
            self._buf = data[pos:]
        if added:
            self._pushed(added)
        elif self._state == DONE:
            self._wake()
