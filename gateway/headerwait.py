"""Tornado's wait for a request's headers, one event-loop pass shorter.

``HTTP1Connection`` waits for each request's headers (the first on a connection, and
every keep-alive one after it) with ``gen.with_timeout(deadline, header_future)``: a
second future chained to the read future, a timer, and a callback that removes the timer.
When the headers arrive, the chained copy is made on the next event-loop pass and the
connection's coroutine resumes on the pass after that: two passes (each an
``epoll_wait`` and its callbacks) between the request's bytes and the code that reads
them, on every request.

:func:`install` gives ``tornado.http1connection`` a ``gen`` whose ``with_timeout`` awaits
a plain ``asyncio.Future`` (the header read) itself, under ``asyncio.timeout``: the
coroutine resumes on the next pass. On a timeout the read future is cancelled (Tornado's
own version leaves it pending) and ``TimeoutError`` is raised as before; Tornado then
closes the connection, which is all it does with that future. Anything else (the body
read, which Tornado passes as a coroutine) goes to Tornado's ``with_timeout`` unchanged.
"""
from __future__ import annotations

import asyncio
import types

from tornado import gen, http1connection
from tornado.ioloop import IOLoop

_tornado_with_timeout = gen.with_timeout


async def with_timeout(timeout, future, quiet_exceptions=()):
    """``gen.with_timeout`` for a Future and an absolute deadline (``IOLoop.time()``,
    which is ``time.time()``): no chained future, one event-loop pass fewer."""
    if type(timeout) is not float or not isinstance(future, asyncio.Future):
        return await _tornado_with_timeout(timeout, future,
                                           quiet_exceptions=quiet_exceptions)
    if future.done():
        return future.result()
    async with asyncio.timeout(timeout - IOLoop.current().time()):
        return await future


def install() -> None:
    """Make ``tornado.http1connection`` use :func:`with_timeout` (idempotent; only that
    module's ``gen`` is replaced, ``tornado.gen`` itself is unchanged)."""
    if getattr(http1connection.gen, "_ayct_headerwait", False):
        return
    shim = types.ModuleType("tornado.gen")
    shim.__dict__.update(gen.__dict__)
    shim.with_timeout = with_timeout
    shim._ayct_headerwait = True
    http1connection.gen = shim
