"""Size limits answered with JSON errors, in front of the Tornado application.

Tornado drops the connection when a body exceeds ``max_body_size`` and answers its own
parse errors with an empty ``400``. :class:`RequestGuard` sits between the HTTPServer and
the application (it is the server's request callback) and instead answers:
- 431 when the raw request header block (padding included) exceeds ``max_header_bytes``
  (up to Tornado's hard cap of ``HEADER_HARD_CAP_FACTOR`` times that; beyond it Tornado
  closes the connection);
- 400 ``invalid_framing`` when the body's framing is ambiguous: Content-Length and
  Transfer-Encoding together, more than one Content-Length (repeated or as a list, even
  equal ones), a Content-Length that is not plain digits, or a Transfer-Encoding other
  than one ``chunked``. Nothing of such a body reaches the application: what the client
  still sends is read in plain blocks and discarded, then the connection closes;
- 413 when the declared or received body exceeds ``max_body_bytes``, or a chunked body
  has more than :func:`max_chunks` chunks (each chunk has a fixed cost: 1-byte chunks
  made a body cost per byte); the response goes out at once, the rest of the body is
  read in plain blocks and discarded (up to 16 times the limit and at least 64 MiB, so
  the client can read the answer without a connection reset), then the connection
  closes;
- 408 when a body has not arrived within ``server.body_timeout`` (Tornado would close the
  connection without a word; its own body timeout is moved one second later as a backstop
  for chunked bodies, and left out for the others: our timer covers them);
- a JSON body for the bare ``400 Bad Request`` Tornado writes for a malformed request.
Errors are OpenAI-style JSON, or a small HTML page for browsers (``Accept: text/html``),
with ``Connection: close`` (and the connection does close), and no body for ``HEAD``.
A request that passes goes to the lean path when ``lean`` (a
:class:`gateway.http.lean.LeanRouter`) takes it, else to the Tornado application.
"""
from __future__ import annotations

import html
import json
import re
import time
import weakref
from typing import Any

from tornado import httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from gateway.http import headerparse

from gateway.http import tornado_compat
from gateway.errors import APIError

HEADER_HARD_CAP_FACTOR = 4
DRAIN_MIN = 64 << 20   # read (and discard) up to max(16 x the limit, 64 MiB) of a refused body
_BARE_400 = tornado_compat.BARE_400
_DIGITS = re.compile(r"[0-9]+")
MIN_CHUNKS = 1024        # chunks any chunked body may have...
MIN_AVG_CHUNK = 512      # ...and one more per this many bytes of the body limit
DISCARD_TIMEOUT = 10.0   # seconds to discard a refused body when no body_timeout is set


def _json_bytes(err: APIError) -> bytes:
    return json.dumps(err.body(), separators=(",", ":")).encode()


def _malformed_response() -> bytes:
    body = _json_bytes(APIError(400, "Malformed HTTP request: the request line or a header "
                                     "could not be parsed.", code="malformed_request"))
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body


_JSON_400 = _malformed_response()


def drain_bytes(max_body_bytes: int) -> int:
    """How much of a refused body is read and discarded before closing."""
    return max(16 * max_body_bytes, DRAIN_MIN)


def max_chunks(max_body_bytes: int) -> int:
    """How many chunks a chunked request body may have (2,048 for the 1 MiB default)."""
    return max(MIN_CHUNKS, max_body_bytes // MIN_AVG_CHUNK)


def framing_error(headers: httputil.HTTPHeaders) -> str | None:
    """Why the framing of a request body is ambiguous or unsupported, or None. Different
    parsers (a proxy, Tornado, the guard) must not be able to read different lengths."""
    lengths = headers.get_list("Content-Length")
    codings = headers.get_list("Transfer-Encoding")
    if lengths and codings:
        return "A request may not have both Content-Length and Transfer-Encoding."
    if len(lengths) > 1 or (lengths and "," in lengths[0]):
        return "A request may have one Content-Length header with one value."
    if lengths and _DIGITS.fullmatch(lengths[0]) is None:
        return "Content-Length must be a decimal number of bytes."
    if len(codings) > 1 or (codings and codings[0].lower() != "chunked"):
        return "The only Transfer-Encoding accepted is one 'chunked'."
    return None


def content_length(value: str) -> int:
    """A Content-Length of plain digits as a number (any past 18 digits is huge)."""
    digits = value.lstrip("0")
    return int(digits or "0") if len(digits) <= 18 else 1 << 62


def server_options(max_body_bytes: int, max_header_bytes: int) -> dict[str, Any]:
    """HTTPServer size arguments that leave the limits to :class:`RequestGuard`."""
    return {"max_body_size": drain_bytes(max_body_bytes),
            "max_header_size": max_header_bytes * HEADER_HARD_CAP_FACTOR}


class RequestGuard(httputil.HTTPServerConnectionDelegate):
    """The HTTPServer's request callback: enforces the limits, then hands over to ``app``."""

    def __init__(self, app: httputil.HTTPServerConnectionDelegate, max_body_bytes: int,
                 max_header_bytes: int, lean: Any = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.max_chunks = max_chunks(max_body_bytes)
        self.lean = lean
        # the requests of open connections (waiting for their headers, or served), and
        # maybe some of closed ones not yet collected: see _current()
        self.requests: "weakref.WeakSet[_GuardedRequest]" = weakref.WeakSet()
        self.started = 0

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        _json_parse_errors(request_conn)
        headerparse.speed_up(request_conn)   # its request headers: one regex, not several a line
        self.started += 1
        request = _GuardedRequest(self, server_conn, request_conn, self.started)
        self.requests.add(request)
        return request

    def _current(self) -> "list[_GuardedRequest]":
        """The current request of each open HTTP connection (a WebSocket is detached:
        not one). Tornado does not tell this delegate when a connection closes."""
        latest: dict[int, _GuardedRequest] = {}
        for request in list(self.requests):
            stream = getattr(request.conn, "stream", None)
            if stream is None or stream.closed():
                continue
            seen = latest.get(id(stream))
            if seen is None or seen.seq < request.seq:
                latest[id(stream)] = request
        return list(latest.values())

    def open_connections(self) -> int:
        """How many HTTP connections are open (WebSocket connections are not)."""
        return len(self._current())

    def close_idle(self, idle_for: float) -> int:
        """Close the connections that have been waiting for a next request for
        ``idle_for`` seconds with nothing of one received (the drain). Returns how many."""
        now = time.monotonic()
        closed = 0
        for request in self._current():
            stream = request.conn.stream
            if request.idle_since is not None and now - request.idle_since >= idle_for \
                    and not tornado_compat.read_buffer_size(stream):
                stream.close()
                closed += 1
        return closed

    def delegate_for(self, start_line, server_conn: object,
                     request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """Who serves a request that passed the limits: the lean path, or the app."""
        lean = self.lean and self.lean.delegate_for(start_line, server_conn, request_conn)
        return lean or self.app.start_request(server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


def _nodelay_kept(value: bool) -> None:
    """A connection's ``set_nodelay`` once :func:`_nodelay_for_good` has run: a no-op."""


def _nodelay_for_good(stream: Any) -> None:
    """Turn TCP_NODELAY on once for a new connection and keep it on (as nginx's
    ``tcp_nodelay`` and uvicorn do). Tornado turns it on at the end of every response
    and off again before the next request, and the SSE handler turns it on for each
    stream: three ``setsockopt`` system calls per request, each resolving the socket's
    family as an enum first. Every response is written whole or as events meant to go
    out at once, so Nagle's delay never helps here. Streams whose class has its own
    ``set_nodelay`` are left alone."""
    if getattr(type(stream), "set_nodelay", None) is not IOStream.set_nodelay:
        return
    stream.set_nodelay(True)
    stream.set_nodelay = _nodelay_kept


def _json_parse_errors(request_conn: Any) -> None:
    """Give Tornado's bare 400 (malformed request line/headers) a JSON error body (and
    the new connection's stream lighter write queues, and TCP_NODELAY for good)."""
    stream = getattr(request_conn, "stream", None)
    if stream is None or getattr(stream, "_ayct_json_errors", False):
        return
    tornado_compat.small_write_queues(stream)
    _nodelay_for_good(stream)
    write = stream.write

    def json_write(data, *args, **kwargs):
        if data == _BARE_400:
            data = _JSON_400
        return write(data, *args, **kwargs)
    stream.write = json_write
    stream._ayct_json_errors = True


class _GuardedRequest(httputil.HTTPMessageDelegate):
    """One request: passed through to the application unless a limit answers it first."""

    def __init__(self, guard: RequestGuard, server_conn: object, conn: Any,
                 seq: int = 0) -> None:
        self.guard = guard
        self.seq = seq
        self.server_conn = server_conn
        self.inner: httputil.HTTPMessageDelegate | None = None   # once the headers passed
        self.conn = conn
        self.rejected = False
        self.finished = False
        self.received = 0
        self.chunked = False
        self.read_done = False
        self.accept = ""
        self.method = ""
        self.timer: object | None = None
        self.idle_since: float | None = time.monotonic()   # None once headers arrived

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        self.idle_since = None
        self.accept = headers.get("Accept", "")
        self.method = start_line.method
        framing = framing_error(headers)   # first: the answers below trust the framing
        if framing is not None:
            return self._refuse_framing(headers, framing)
        self.chunked = "Transfer-Encoding" in headers
        size = len(start_line.path) + sum(len(k) + len(v) + 4 for k, v in headers.get_all())
        size = max(size, getattr(self.conn, "header_bytes", 0))   # padding counts
        if size > self.guard.max_header_bytes:
            return self._reject(headers, APIError(
                431, f"Request headers too large: the limit is {self.guard.max_header_bytes} "
                     "bytes.", code="headers_too_large", type="invalid_request_error"))
        declared = content_length(headers.get("Content-Length") or "0")
        if declared and headers["Content-Length"] != str(declared):
            headers["Content-Length"] = str(declared)   # leading zeros: Tornado's int()
        if declared > self.guard.max_body_bytes:
            return self._reject(headers, self._too_large())
        if self.chunked:
            self.conn.max_chunks = self.guard.max_chunks   # then it calls too_many_chunks
        timeout = getattr(getattr(self.conn, "params", None), "body_timeout", None)
        if timeout and (self.chunked or declared > 0):
            # Our 408 comes first. Tornado's own timeout (one second later) costs two
            # event-loop passes per request; it is kept only as the backstop of a chunked
            # body, whose drain after a refusal midway our timer no longer bounds.
            self.conn.set_body_timeout(timeout + 1.0 if self.chunked else None)
            if self.chunked or not self._body_buffered(declared):
                self.timer = IOLoop.current().call_later(timeout, self._too_slow, timeout)
        self.inner = self.guard.delegate_for(start_line, self.server_conn, self.conn)
        return self.inner.headers_received(start_line, headers)

    def _refuse_framing(self, headers: httputil.HTTPHeaders, message: str) -> None:
        """400 at once; no byte of the body is parsed, buffered or passed on. What the
        client still sends is read in plain blocks and discarded (as after a 413) until
        the drain limit, the body timeout or the client's close; then the connection
        closes."""
        self.rejected = True
        self._respond(APIError(400, message, code="invalid_framing",
                               type="invalid_request_error"))
        for name in ("Content-Length", "Transfer-Encoding"):
            if name in headers:
                del headers[name]
        if not isinstance(self.conn, headerparse.FastHeaderConnection) or \
                headers.get("Expect", "").lower() == "100-continue":
            return self._finish()   # no body will be read: close once the answer is out
        # Framed as chunked for Tornado, and discarded unparsed (FastHeaderConnection).
        headers["Transfer-Encoding"] = "chunked"
        self.chunked = True
        self.conn.discard_body = True
        self.conn.set_max_body_size(1 << 62)
        timeout = getattr(getattr(self.conn, "params", None), "body_timeout", None)
        self.conn.set_body_timeout(timeout or DISCARD_TIMEOUT)

    def too_many_chunks(self) -> None:
        """The chunked body passed :func:`max_chunks`: 413 (the rest is discarded)."""
        if self.rejected:
            return
        if self.inner is not None:
            self.inner.on_connection_close()   # drop what it buffered
        self._reject(httputil.HTTPHeaders(), APIError(
            413, f"Request body in too many chunks: the limit is {self.guard.max_chunks} "
                 "chunks per body. Send it with a Content-Length, or in larger chunks.",
            code="request_too_large"))

    def _body_buffered(self, length: int) -> bool:
        """Whether the whole body of ``length`` bytes already arrived with the headers
        (the usual API request): Tornado then reads it in this same loop pass, so it
        cannot time out and no 408 timer is armed. False where Tornado's stream does not
        say."""
        stream = getattr(self.conn, "stream", None)
        return tornado_compat.read_buffer_size(stream) >= length

    def _too_slow(self, timeout: float) -> None:
        """The body did not arrive in time: 408, then close."""
        self.timer = None
        if self.read_done or self.rejected:
            return
        self.inner.on_connection_close()   # drop what it buffered
        self.rejected = True
        self._respond(APIError(408, f"Request body not received within {timeout:g} seconds.",
                               code="body_timeout", type="timeout_error"))
        self._finish()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            IOLoop.current().remove_timeout(self.timer)
            self.timer = None

    def _too_large(self) -> APIError:
        return APIError(413, f"Request body too large: the limit is "
                             f"{self.guard.max_body_bytes} bytes.", code="request_too_large")

    def _respond(self, err: APIError) -> None:
        """Write the whole error response (Connection: close): JSON, or a small HTML page
        for a browser (``Accept: text/html``). Finishing is separate."""
        reason = httputil.responses.get(err.status, "Request Rejected")
        if "text/html" in self.accept:
            body = (f"<!doctype html><meta charset=utf-8><title>{err.status} {reason}</title>"
                    f"<h1>{reason}</h1><p>{html.escape(err.message)}</p>").encode()
            kind = "text/html; charset=UTF-8"
        else:
            body, kind = _json_bytes(err), "application/json"
        # Connection: close is what happens too (Tornado would keep the connection open
        # when the whole request had been read).
        tornado_compat.close_after_response(self.conn)
        self.conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", err.status, reason),
            httputil.HTTPHeaders({"Content-Type": kind, "Content-Length": str(len(body)),
                                  "Connection": "close", "X-Content-Type-Options": "nosniff"}),
            None if self.method == "HEAD" else body)   # HEAD: the headers only

    def _reject(self, headers: httputil.HTTPHeaders, err: APIError) -> None:
        """Answer now; read and discard what the client still sends, then close."""
        self.rejected = True
        self._cancel_timer()
        self._respond(err)
        self.conn.discard_body = True   # a chunked body: plain reads, no chunk parsing
        declared = headers.get("Content-Length", "")
        drain = drain_bytes(self.guard.max_body_bytes)
        length = content_length(declared) if _DIGITS.fullmatch(declared) else 0
        # Let Tornado read (and us discard) the body instead of failing on it; we stop
        # reading ourselves past the drain limit.
        self.conn.set_max_body_size(1 << 62 if self.chunked else max(length, drain))
        if headers.get("Expect", "").lower() == "100-continue" or length > drain:
            for name in ("Content-Length", "Transfer-Encoding"):   # Tornado reads none
                if name in headers:
                    del headers[name]
            self._finish()   # no body will be read: close as soon as the answer is out

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self.conn.finish()

    def data_received(self, chunk: bytes):
        if self.rejected:
            self.received += len(chunk)
            if self.received > drain_bytes(self.guard.max_body_bytes):
                self._finish()
            return None
        if self.chunked:
            self.received += len(chunk)
            if self.received > self.guard.max_body_bytes:
                self.inner.on_connection_close()   # drop what it buffered
                self.received = 0
                self._reject(httputil.HTTPHeaders(), self._too_large())
                return None
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.read_done = True
        self._cancel_timer()
        if self.rejected:
            return self._finish()
        self.inner.finish()

    def on_connection_close(self) -> None:
        self._cancel_timer()
        if not self.rejected and self.inner is not None:
            self.inner.on_connection_close()
