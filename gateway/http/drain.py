"""Draining on SIGTERM, for rolling restarts.

1. Stop listening (new connections go to the other gateways), report not ready
   (``/readyz`` 503), and answer every request with ``Connection: close``. A request that
   arrives on a kept-alive connection is served as usual (with ``Connection: close``, so
   its client's next request opens a connection to another gateway): a client behind a
   round-robin proxy sees no failure. A kept-alive connection that stays idle for
   ``IDLE_GRACE`` seconds (counted from the drain's start at the earliest) is closed: a
   client sees that before its next request, except in the instant of the close itself.
   Idle WebSocket connections close at once (1001), and a WebSocket takes no new request.
2. Requests in progress (SSE and JSON completions, WebSocket requests) and open HTTP
   connections go on until they end, for up to ``server.drain_timeout`` seconds.
3. Then new API requests are refused (503 ``server_shutdown``, ``Retry-After: 1``), and
   what still runs is ended cleanly: an SSE stream gets a final ``error`` event
   (``server_shutdown``) and a proper end of the chunked body, a JSON request a 503, a
   WebSocket request an ``error`` message, then the socket the goodbye and close 1001.
After this the usual shutdown runs (usage flush, spool), bounded as before.
"""
from __future__ import annotations

import asyncio
import logging
import weakref

from tornado.iostream import StreamClosedError

from gateway.errors import APIError

log = logging.getLogger("allyoucantoken")

# HTTP requests being answered (added as they start, removed by the access log).
IN_FLIGHT: "weakref.WeakSet" = weakref.WeakSet()
POLL = 0.05
IDLE_GRACE = 2.0   # seconds an idle kept-alive connection may wait for its next request
FINAL_WRITE_GRACE = 1.0   # seconds for the final events and WebSocket close handshakes


def shutdown_error() -> APIError:
    return APIError(503, "The server is restarting; retry the request (it goes to another "
                         "server).", code="server_shutdown", headers={"Retry-After": "1"})


def refusing(gateway) -> bool:
    """Whether new API requests get 503 ``server_shutdown``: once the drain has stopped
    waiting (its deadline, or a second signal). Before that they are served."""
    return getattr(gateway, "refusing_requests", False)


def _busy() -> int:
    from gateway.handlers import ws
    return len(IN_FLIGHT) + sum(1 for s in list(ws.OPEN_SOCKETS) if s.tasks)


async def end_cut_off(handler, encoder=None, sent: int = 0) -> None:
    """A generation of ``handler`` was cancelled: when that was the drain (not the client
    leaving), end the response properly: a final SSE error event and the end of the
    body, or a 503 JSON error when nothing was sent yet."""
    if not handler.gateway.draining or handler.request.connection.stream.closed():
        return
    if encoder is None or sent == 0:
        return handler.send_api_error(shutdown_error())
    handler.write(encoder.error(shutdown_error().body()))
    try:
        await handler.finish()
    except StreamClosedError:
        pass


async def drain(server, gateway, timeout: float, hurry: asyncio.Event | None = None) -> int:
    """Run steps 1-3; returns how many requests had to be cut off. ``hurry`` (a second
    signal) ends the waiting early."""
    from gateway.handlers import ws
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    gateway.draining = True
    server.stop()
    server.conn_params.no_keep_alive = True   # "Connection: close" on every response now
    ws.begin_drain()
    guard = getattr(server, "request_callback", None)   # gateway.http.guard.RequestGuard
    connections = getattr(guard, "open_connections", lambda: 0)
    close_idle = getattr(guard, "close_idle", None)
    idle_after = loop.time() + IDLE_GRACE   # no kept-alive connection is closed before
    while loop.time() < deadline and not (hurry and hurry.is_set()):
        if close_idle is not None and loop.time() >= idle_after:
            close_idle(IDLE_GRACE)
        if not _busy() and not connections():
            break
        await asyncio.sleep(min(POLL, max(0.0, deadline - loop.time())))
    gateway.refusing_requests = True
    left = _busy()
    if left:
        log.warning("drain: %d request(s) still running after %gs; ending them", left,
                    timeout)
    ws.close_all_sockets()
    await gateway.cancel_running()   # their handlers now write the final event
    grace = loop.time() + FINAL_WRITE_GRACE
    while (IN_FLIGHT or ws.OPEN_SOCKETS) and loop.time() < grace:
        await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(server.close_all_connections(), FINAL_WRITE_GRACE)
    except TimeoutError:
        log.warning("drain: connections did not close in time")
    return left
