"""The lean path: hot API routes served without Tornado's web layer.

``POST /v1/chat/completions`` and ``POST /v1/completions`` are most of the traffic. For
them :class:`gateway.http.guard.RequestGuard` asks a :class:`LeanRouter` for a
:class:`LeanDelegate` instead of handing the request to the Tornado ``Application``:
no routing table, no ``RequestHandler`` (with its output transforms, UI namespaces and
``HTTPHeaders``), and the handler's coroutine starts eagerly, in the loop pass that
received the body, instead of as a task on the next pass. The HTTP/1.1 framing stays
Tornado's (``HTTP1Connection``: keep-alive, chunked output, timeouts), and so does the
request object the auth plugins see (``HTTPServerRequest``).

:class:`LeanHandler` is the small part of ``RequestHandler`` the API handlers use
(``set_status``, ``set_header``, ``write``, ``flush``, ``finish``, ``clear``,
``get_status``) with what the Tornado application adds to every API response: the
headers of :class:`gateway.handlers.base.BaseAPIHandler`, ``x-request-id``, the access
log line, the drain's in-flight bookkeeping, and the same error rendering
(:class:`gateway.handlers.base.APIRequestMixin`). A route's handler class is the same
code as its Tornado handler (see :mod:`gateway.handlers.openai`). While the gateway
drains they are served here as usual (``Connection: close``); once the drain has stopped
waiting they go to the Tornado application (503 ``server_shutdown``).
"""
from __future__ import annotations

import asyncio
import logging
import re
import sys
from typing import Any

import tornado.web
from tornado import httputil

from gateway.http import accesslog

from gateway.http import drain

from gateway.http import requestid

from gateway.http import tornado_compat
from gateway.handlers.base import APIRequestMixin, http_date

_normalize = tornado_compat.normalize_header   # Tornado's own (cached) normalisation
_UNSAFE_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_gen_log = logging.getLogger("tornado.general")


class _Headers(dict):
    """Response headers as ``HTTP1Connection.write_headers`` reads them: a plain dict
    of normalised names (one value each) with ``get_all``."""

    __slots__ = ()

    def get_all(self):
        return self.items()


class LeanHandler(APIRequestMixin):
    """Stands in for ``tornado.web.RequestHandler`` for one request on the lean path.

    Subclasses define ``async def serve()`` (the response is finished when it returns, if
    it did not finish it); override ``on_finish`` (after the response
    is finished) and ``on_connection_close`` (the client left before it was) as with
    Tornado. An exception that escapes ``serve`` is answered as the Tornado handlers
    answer it (an OpenAI-style 500, never a trace; logged by type and route).

    Its state has the names of ``RequestHandler``'s (``_headers``, ``_finished``,
    ``_headers_written``, ``_status_code``, ``_reason``, ``_write_buffer``), so that
    :mod:`gateway.http.tornado_compat`'s accessors serve both kinds of handler."""

    def __init__(self, gateway, request: httputil.HTTPServerRequest) -> None:
        self.gateway = gateway
        self.request = request
        self.principal = None
        self._finished = False
        self._headers_written = False
        self.clear()
        request.request_id = requestid.from_client(request.headers.get(requestid.HEADER))
        drain.IN_FLIGHT.add(request)
        request.connection.set_close_callback(self.on_connection_close)

    # -- what the handlers call, as on a RequestHandler -----------------------------------
    def clear(self) -> None:
        self._headers = _Headers({"Content-Type": "application/json",
                                  "X-Content-Type-Options": "nosniff", "Date": http_date()})
        self._write_buffer: list[bytes] = []
        self._status_code = 200
        self._reason = "OK"

    def set_status(self, status_code: int, reason: str | None = None) -> None:
        self._status_code = status_code
        self._reason = reason or httputil.responses.get(status_code, "Unknown")

    def get_status(self) -> int:
        return self._status_code

    def set_header(self, name: str, value: Any) -> None:
        value = str(value)
        if _UNSAFE_VALUE.search(value):
            raise ValueError("Unsafe header value %r" % value)
        self._headers[_normalize(name)] = value

    def write(self, chunk: str | bytes) -> None:
        if self._finished:
            raise RuntimeError("Cannot write() after finish()")
        self._write_buffer.append(chunk.encode() if isinstance(chunk, str) else chunk)

    def flush(self) -> "asyncio.Future[None]":
        """Send what was written (with the response headers the first time)."""
        buffer = self._write_buffer
        chunk = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        self._write_buffer = []
        connection = self.request.connection
        if self._headers_written:
            return connection.write(chunk)
        self._headers_written = True
        headers = self._headers
        headers[requestid.HEADER] = requestid.of(self.request)
        return connection.write_headers(
            httputil.ResponseStartLine("", self._status_code, self._reason), headers, chunk)

    def finish(self, chunk: str | bytes | None = None) -> "asyncio.Future[None]":
        """End the response (Content-Length when nothing was sent yet), log it."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        if chunk is not None:
            self.write(chunk)
        if not self._headers_written and "Content-Length" not in self._headers:
            self._headers["Content-Length"] = str(sum(map(len, self._write_buffer)))
        connection = self.request.connection
        connection.set_close_callback(None)
        buffer = self._write_buffer
        if self._headers_written and buffer and tornado_compat.chunking_output(connection):
            # The last chunk and the end of the chunked body in one socket write (Tornado
            # would make two): framed here, so the connection must not frame them again.
            self._write_buffer = []
            future = tornado_compat.write_last_chunk(connection, b"".join(buffer))
        else:
            future = self.flush()
        connection.finish()
        accesslog.log_request(self)
        self._finished = True
        self.on_finish()
        return future

    def on_finish(self) -> None:
        """Called once the response is finished."""

    def on_connection_close(self) -> None:
        """Called when the client closes the connection before the response is finished."""

    async def serve(self) -> None:
        raise NotImplementedError

    # -- running ------------------------------------------------------------------------
    def start(self) -> asyncio.Task:
        """Run :meth:`serve` in a task started eagerly (its first steps run now)."""
        return asyncio.Task(self._execute(), loop=asyncio.get_running_loop(),
                            eager_start=True)

    async def _execute(self) -> None:
        try:
            await self.serve()
            if not self._finished:   # as Tornado's auto-finish (a client that left: 499)
                self.finish()
        except Exception as exc:  # noqa: BLE001 - answered as the Tornado handlers do
            self.log_exception(*sys.exc_info())
            if self._finished:
                return
            if self._headers_written:   # too late for an error response: end it
                _gen_log.error("Cannot send error response after headers written")
                try:
                    self.finish()
                except Exception:  # noqa: BLE001 - the connection is gone
                    pass
                return
            self.send_api_error(self.error_for(500, exc), exc)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, tornado.web.HTTPError):   # as RequestHandler logs them
            return _gen_log.warning("%d %s %s", value.status_code, self.request.method,
                                    self.request.path)
        super().log_exception(typ, value, tb)


class LeanDelegate(httputil.HTTPMessageDelegate):
    """Reads one request for a lean route (after :class:`gateway.http.guard.RequestGuard`
    has checked its limits), then runs its handler class."""

    __slots__ = ("handler_class", "gateway", "server_conn", "conn", "request", "chunks",
                 "handler")

    def __init__(self, handler_class: type[LeanHandler], gateway, server_conn: Any,
                 conn: Any) -> None:
        self.handler_class = handler_class
        self.gateway = gateway
        self.server_conn = server_conn
        self.conn = conn
        self.request: httputil.HTTPServerRequest | None = None
        self.chunks: list[bytes] | None = []
        self.handler: LeanHandler | None = None

    def headers_received(self, start_line, headers: httputil.HTTPHeaders) -> None:
        self.request = httputil.HTTPServerRequest(
            connection=self.conn, server_connection=self.server_conn,
            start_line=start_line, headers=headers)

    def data_received(self, chunk: bytes) -> None:
        if self.chunks is not None:
            self.chunks.append(chunk)

    def finish(self) -> None:
        chunks, self.chunks = self.chunks, None
        request = self.request
        request.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.handler = self.handler_class(self.gateway, request)
        self.handler.start()

    def on_connection_close(self) -> None:
        self.chunks = None


class LeanRouter:
    """Which requests take the lean path: ``routes`` maps an exact path to its
    :class:`LeanHandler` class (POST only). None once the drain refuses requests."""

    def __init__(self, gateway, routes: dict[str, type[LeanHandler]]) -> None:
        self.gateway = gateway
        self.routes = routes

    def delegate_for(self, start_line: httputil.RequestStartLine, server_conn: Any,
                     conn: Any) -> LeanDelegate | None:
        if start_line.method != "POST" or drain.refusing(self.gateway):
            return None
        handler_class = self.routes.get(start_line.path.partition("?")[0])
        if handler_class is None:
            return None
        return LeanDelegate(handler_class, self.gateway, server_conn, conn)
