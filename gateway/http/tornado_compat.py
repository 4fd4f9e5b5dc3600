"""Every use of Tornado's private internals, in one place, for one tested minor version.

The fast path leans on parts of Tornado that are not its public API. They are all here,
under public names, and nowhere else in the gateway: ``setup.cfg`` caps Tornado below
the next minor version, and ``tests/test_compat.py`` fails, naming the internal and
:data:`TESTED`, when one of them is missing or behaves differently. To move to a new
Tornado: raise the cap, run that test, and adapt what it names here.

What is used, and by whom:

- ``httputil._normalize_header`` (cached Http-Header-Case): :data:`normalize_header`,
  for :mod:`gateway.http.lean` and :mod:`gateway.http.headerparse`.
- ``HTTPHeaders._as_list`` / ``_combined_cache`` (the two dicts behind the headers):
  :func:`header_maps` and :class:`RequestHeaders`, for :mod:`gateway.http.headerparse`.
- ``HTTP1Connection._parse_headers``, ``_read_chunked_body``, ``_deliver_body``,
  ``_max_body_size``: :class:`HTTP1ConnectionHooks`, the base of
  :class:`gateway.http.headerparse.FastHeaderConnection`.
- ``HTTP1Connection._chunking_output``: :func:`chunking_output` and
  :func:`write_last_chunk`, for :mod:`gateway.http.lean`.
- ``HTTP1Connection._disconnect_on_finish``: :func:`close_after_response`, for
  :mod:`gateway.http.guard`.
- ``IOStream._read_buffer_size``: :func:`read_buffer_size`; ``IOStream._write_futures``
  and ``_StreamBuffer._buffers`` (two deques per connection): :func:`small_write_queues`;
  for :mod:`gateway.http.guard`.
- ``WebSocketProtocol13._handle_message`` and ``_frame_compressed``:
  :class:`WebSocketProtocol13Hooks`, the base of the WebSocket handler's strict UTF-8
  protocol (:mod:`gateway.handlers.ws`).
- ``RequestHandler._headers``, ``_write_buffer``, ``_status_code``, ``_reason`` (what
  ``clear()`` resets), ``_finished`` and ``_headers_written``: :func:`reset_response`,
  :func:`response_finished`, :func:`headers_written`, :func:`replace_headers` and
  :func:`status_reason`, for :mod:`gateway.handlers.base`, :mod:`gateway.http.sse`,
  :mod:`gateway.handlers.openai` and the dashboard. The lean path's
  :class:`gateway.http.lean.LeanHandler` keeps its state under the same names, so these
  serve both kinds of handler, and :class:`gateway.errors.ErrorRenderer` too.

Behaviour relied upon without a private name (checked by the test too): Tornado answers
a malformed request line or header block by writing exactly :data:`BARE_400` to the
stream (the request guard gives it a JSON body), and ``RequestHandler.clear`` sets the
``Server``, ``Content-Type`` and ``Date`` headers and nothing else before
``set_default_headers``.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any

import tornado
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.websocket import WebSocketProtocol13

TESTED = (6, 6)   # the minor version these internals were read from (setup.cfg: <6.7)
BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"   # Tornado's answer to a malformed request


def tested_version() -> str:
    return "%d.%d" % TESTED


def running_version() -> str:
    return tornado.version


# -- headers --------------------------------------------------------------------------
normalize_header = httputil._normalize_header   # Tornado's own (cached) normalisation


def header_maps(headers: httputil.HTTPHeaders) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The two dicts behind ``HTTPHeaders``: every value of each normalised name, in
    order, and the cache of their comma-joined values (a name with several values must
    not be in it until asked for; :class:`RequestHeaders` fills it)."""
    return headers._as_list, headers._combined_cache


class RequestHeaders(httputil.HTTPHeaders):
    """``HTTPHeaders`` whose ``get`` is a dictionary lookup: the inherited ``Mapping.get``
    goes through ``__getitem__`` and raises and catches a ``KeyError`` for every absent
    header (most of the ten or so a request is asked for)."""

    def get(self, name, default=None):
        """The header's value (repeated headers joined by commas), else ``default``."""
        if type(name) is not str:
            return super().get(name, default)
        header = normalize_header(name)
        value = self._combined_cache.get(header)
        if value is None:
            values = self._as_list.get(header)
            if values is None:
                return default
            value = self._combined_cache[header] = ",".join(values)
        return value


# -- HTTP/1.1 connections -------------------------------------------------------------
class HTTP1ConnectionHooks(HTTP1Connection):
    """An ``HTTP1Connection`` whose private steps are reached under public names, for
    subclasses to override: :meth:`parse_headers` (Tornado calls ``_parse_headers`` with
    the raw header block) and :meth:`read_chunked_body` (``_read_chunked_body``), with
    :meth:`deliver_body` (``_deliver_body``) and :attr:`body_size_limit`
    (``_max_body_size``, what ``set_max_body_size`` sets) for them to use."""

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        return self.parse_headers(data)

    def parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        """(start line, headers) of a raw header block: Tornado's own parser."""
        return HTTP1Connection._parse_headers(self, data)

    def _read_chunked_body(self, delegate: httputil.HTTPMessageDelegate):
        return self.read_chunked_body(delegate)

    def read_chunked_body(self, delegate: httputil.HTTPMessageDelegate):
        """Read a chunked request body into ``delegate``: Tornado's own reader."""
        return HTTP1Connection._read_chunked_body(self, delegate)

    def deliver_body(self, delegate: httputil.HTTPMessageDelegate, data: bytes):
        """Hand a piece of the body to the delegate (awaitable), as Tornado's readers do."""
        return self._deliver_body(delegate, data)

    @property
    def body_size_limit(self) -> int:
        return self._max_body_size


def chunking_output(connection: Any) -> bool:
    """Whether the response on ``connection`` is sent with chunked framing (False for
    connections that do not say)."""
    return getattr(connection, "_chunking_output", None) is True


def write_last_chunk(connection: Any, chunk: bytes) -> "asyncio.Future[None]":
    """Write the last chunk and the end of the chunked body in one socket write (Tornado
    would make two), and tell the connection not to frame them again. Only when
    :func:`chunking_output`; then call the connection's ``finish()``."""
    connection._chunking_output = False
    return connection.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(chunk), chunk))


def close_after_response(connection: Any) -> None:
    """Close ``connection`` once the current response is written (Tornado would keep it
    open when the whole request had been read)."""
    connection._disconnect_on_finish = True


# -- streams --------------------------------------------------------------------------
def read_buffer_size(stream: Any) -> int:
    """How many received bytes ``stream`` holds unread (0 for streams that do not say)."""
    return getattr(stream, "_read_buffer_size", 0)


class SmallQueue(list):
    """A list with ``popleft``: what Tornado's IOStream needs of its write queues, in 56
    bytes instead of an empty ``collections.deque``'s 760 (two per connection). The
    queues hold a handful of entries at most (one per pending write)."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


def small_write_queues(stream: Any) -> None:
    """Swap a new stream's two empty write deques for :class:`SmallQueue` (a no-op if
    Tornado's internals differ)."""
    futures = getattr(stream, "_write_futures", None)
    if type(futures) is collections.deque and not futures:
        stream._write_futures = SmallQueue()
    buffer = getattr(stream, "_write_buffer", None)
    buffers = getattr(buffer, "_buffers", None)
    if type(buffers) is collections.deque and not buffers:
        buffer._buffers = SmallQueue()


# -- WebSocket ------------------------------------------------------------------------
class WebSocketProtocol13Hooks(WebSocketProtocol13):
    """A ``WebSocketProtocol13`` whose last step for each complete message
    (``_handle_message``: decompress, decode text, call ``on_message``) is reached as
    :meth:`handle_message`, with :attr:`frame_compressed` (whether the message's first
    frame was compressed: ``data`` is then still compressed)."""

    def _handle_message(self, opcode: int, data: bytes):
        return self.handle_message(opcode, data)

    def handle_message(self, opcode: int, data: bytes):
        """Tornado's handling of a complete message (a Future or None)."""
        return WebSocketProtocol13._handle_message(self, opcode, data)

    @property
    def frame_compressed(self) -> bool:
        return bool(self._frame_compressed)


# -- request handlers -----------------------------------------------------------------
def reset_response(handler: Any, headers: httputil.HTTPHeaders) -> None:
    """What ``RequestHandler.clear`` does, with ``headers`` as the new response headers:
    then ``set_default_headers()``, an empty body, status 200 OK."""
    handler._headers = headers
    handler.set_default_headers()
    handler._write_buffer = []
    handler._status_code = 200
    handler._reason = "OK"


def response_finished(handler: Any) -> bool:
    """Whether ``finish()`` was called on ``handler``."""
    return handler._finished


def headers_written(handler: Any) -> bool:
    """Whether ``handler``'s response headers went out (its first flush)."""
    return handler._headers_written


def replace_headers(handler: Any, headers: httputil.HTTPHeaders) -> None:
    """Swap ``handler``'s response headers for ``headers`` (once written: Tornado no
    longer reads them)."""
    handler._headers = headers


def status_reason(handler: Any) -> str:
    """The reason phrase of ``handler``'s response status."""
    return handler._reason
