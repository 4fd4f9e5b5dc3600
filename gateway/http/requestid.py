"""Request ids: ``x-request-id`` on every response and in every access log line.

A client's own ``x-request-id`` is kept when it is well-formed (1-128 characters of
``A-Z a-z 0-9 . _ -``); otherwise the gateway makes one. For a completion that id is the
completion's own (``chatcmpl-…``/``cmpl-…``: the body's ``id`` and the usage records'
``request_id``), so one id finds the response, the log line and the usage; for any
other request it is ``req_`` and 24 hex digits. A client that sends its own id gets it
back, and the access log line carries both ids.
"""
from __future__ import annotations

import os
import re

import tornado.web

VALID = re.compile(r"[A-Za-z0-9._-]{1,128}")
HEADER = "X-Request-Id"

_POOL_BYTES = 3072
_pool, _used = b"", 0


def _forget_pool() -> None:
    global _pool, _used
    _pool, _used = b"", 0


# A forked worker (``serve --workers``) must never reuse its parent's random bytes.
os.register_at_fork(after_in_child=_forget_pool)


def token_hex(nbytes: int) -> str:
    """``secrets.token_hex(nbytes)`` (``os.urandom`` bytes as hex), taken from a pool of
    ``os.urandom`` bytes refilled every few hundred ids instead of one system call each
    (ids are made on every request). Each byte is used once; the pool is dropped in a
    forked child."""
    global _pool, _used
    start, end = _used, _used + nbytes
    if end > len(_pool):
        _pool, start, end = os.urandom(max(_POOL_BYTES, nbytes)), 0, nbytes
    _used = end
    return _pool[start:end].hex()


def from_client(value: str | None) -> str | None:
    """The client's id when it is well-formed, else None."""
    return value if value and VALID.fullmatch(value) else None


def of(request) -> str:
    """This request's id (decided once, then kept on the request)."""
    rid = getattr(request, "request_id", None)
    if rid is None:
        rid = getattr(request, "completion_id", None) or "req_" + token_hex(12)
        request.request_id = rid
    return rid


def completion_id(request) -> str | None:
    """The completion id a generation handler noted on this request, if any."""
    return getattr(request, "completion_id", None)


class RequestIdTransform(tornado.web.OutputTransform):
    """Applied by Tornado to every response of the application: sets ``x-request-id``."""

    def __init__(self, request) -> None:
        self.request = request
        request.request_id = from_client(request.headers.get(HEADER))

    def transform_first_chunk(self, status_code, headers, chunk, finishing):
        headers[HEADER] = of(self.request)
        return status_code, headers, chunk
