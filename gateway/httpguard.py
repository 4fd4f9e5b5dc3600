"""Size limits answered with JSON errors, in front of the Tornado application.

Tornado drops the connection when a body exceeds ``max_body_size`` and answers its own
parse errors with an empty ``400``. :class:`RequestGuard` sits between the HTTPServer and
the application (it is the server's request callback) and instead answers:
- 431 when the request headers exceed ``max_header_bytes`` (up to Tornado's hard cap of
  ``HEADER_HARD_CAP_FACTOR`` times that; beyond it Tornado closes the connection);
- 413 when the declared or received body exceeds ``max_body_bytes``; the response goes out
  at once, the rest of the body is read and discarded (up to 16 times the
  limit and at least 64 MiB, so the client can read the answer without a connection reset),
  then the connection closes;
- 408 when a body has not arrived within ``server.body_timeout`` (Tornado would close the
  connection without a word; its own body timeout is moved one second later as a backstop
  for chunked bodies, and left out for the others: our timer covers them);
- a JSON body for the bare ``400 Bad Request`` Tornado writes for a malformed request.
Errors are OpenAI-style JSON, or a small HTML page for browsers (``Accept: text/html``).
A request that passes goes to the lean path when ``lean`` (a
:class:`gateway.leanhttp.LeanRouter`) takes it, else to the Tornado application.
"""
from __future__ import annotations

import collections
import html
import json
from typing import Any

from tornado import httputil
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream

from gateway import headerparse
from gateway.errors import APIError

HEADER_HARD_CAP_FACTOR = 4
DRAIN_MIN = 64 << 20   # read (and discard) up to max(16 x the limit, 64 MiB) of a refused body
_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"


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
        self.lean = lean

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        _json_parse_errors(request_conn)
        headerparse.speed_up(request_conn)   # its request headers: one regex, not several a line
        return _GuardedRequest(self, server_conn, request_conn)

    def delegate_for(self, start_line, server_conn: object,
                     request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        """Who serves a request that passed the limits: the lean path, or the app."""
        lean = self.lean and self.lean.delegate_for(start_line, server_conn, request_conn)
        return lean or self.app.start_request(server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)


class _SmallQueue(list):
    """A list with ``popleft``: what Tornado's IOStream needs of its write queues, in 56
    bytes instead of an empty ``collections.deque``'s 760 (two per connection). The
    queues hold a handful of entries at most (one per pending write)."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


def _small_write_queues(stream: Any) -> None:
    """Swap a new stream's two empty write deques for :class:`_SmallQueue` (a no-op if
    Tornado's internals differ)."""
    futures = getattr(stream, "_write_futures", None)
    if type(futures) is collections.deque and not futures:
        stream._write_futures = _SmallQueue()
    buffer = getattr(stream, "_write_buffer", None)
    buffers = getattr(buffer, "_buffers", None)
    if type(buffers) is collections.deque and not buffers:
        buffer._buffers = _SmallQueue()


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
    _small_write_queues(stream)
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

    def __init__(self, guard: RequestGuard, server_conn: object, conn: Any) -> None:
        self.guard = guard
        self.server_conn = server_conn
        self.inner: httputil.HTTPMessageDelegate | None = None   # once the headers passed
        self.conn = conn
        self.rejected = False
        self.finished = False
        self.received = 0
        self.chunked = False
        self.read_done = False
        self.accept = ""
        self.timer: object | None = None

    def headers_received(self, start_line, headers: httputil.HTTPHeaders):
        self.accept = headers.get("Accept", "")
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        size = len(start_line.path) + sum(len(k) + len(v) + 4 for k, v in headers.get_all())
        if size > self.guard.max_header_bytes:
            return self._reject(headers, APIError(
                431, f"Request headers too large: the limit is {self.guard.max_header_bytes} "
                     "bytes.", code="headers_too_large", type="invalid_request_error"))
        declared = headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.guard.max_body_bytes:
            return self._reject(headers, self._too_large())
        timeout = getattr(getattr(self.conn, "params", None), "body_timeout", None)
        if timeout and (self.chunked or (declared.isdigit() and int(declared) > 0)):
            # Our 408 comes first. Tornado's own timeout (one second later) costs two
            # event-loop passes per request; it is kept only as the backstop of a chunked
            # body, whose drain after a refusal midway our timer no longer bounds.
            self.conn.set_body_timeout(timeout + 1.0 if self.chunked else None)
            if self.chunked or not self._body_buffered(int(declared)):
                self.timer = IOLoop.current().call_later(timeout, self._too_slow, timeout)
        self.inner = self.guard.delegate_for(start_line, self.server_conn, self.conn)
        return self.inner.headers_received(start_line, headers)

    def _body_buffered(self, length: int) -> bool:
        """Whether the whole body of ``length`` bytes already arrived with the headers
        (the usual API request): Tornado then reads it in this same loop pass, so it
        cannot time out and no 408 timer is armed. False where Tornado's stream does not
        say."""
        stream = getattr(self.conn, "stream", None)
        return getattr(stream, "_read_buffer_size", 0) >= length

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
        self.conn.write_headers(
            httputil.ResponseStartLine("HTTP/1.1", err.status, reason),
            httputil.HTTPHeaders({"Content-Type": kind, "Content-Length": str(len(body)),
                                  "Connection": "close", "X-Content-Type-Options": "nosniff"}),
            body)

    def _reject(self, headers: httputil.HTTPHeaders, err: APIError) -> None:
        """Answer now; read and discard what the client still sends, then close."""
        self.rejected = True
        self._cancel_timer()
        self._respond(err)
        declared = headers.get("Content-Length", "")
        drain = drain_bytes(self.guard.max_body_bytes)
        length = int(declared) if declared.isdigit() else 0
        # Let Tornado read (and us discard) the body instead of failing on it; we stop
        # reading ourselves past the drain limit.
        self.conn.set_max_body_size(1 << 62 if self.chunked else max(length, drain))
        if headers.get("Expect", "").lower() == "100-continue" or length > drain:
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
