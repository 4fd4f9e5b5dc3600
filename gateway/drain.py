"""Draining on SIGTERM, for rolling restarts.

1. Stop listening (new connections go to the other gateways), report not ready
   (``/readyz`` 503), close each kept-alive connection after its current response, and
   refuse new API requests that still arrive on one (503 ``server_shutdown``,
   ``Retry-After: 1``). Idle WebSocket connections close at once (1001).
2. Requests in progress (SSE and JSON completions, WebSocket requests) go on until
   they end, for up to ``server.drain_timeout`` seconds.
3. Then what still runs is ended cleanly: an SSE stream gets a final ``error`` event
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
FINAL_WRITE_GRACE = 1.0   # seconds for the final events and WebSocket close handshakes


def shutdown_error() -> APIError:
    return APIError(503, "The server is restarting; retry the request (it goes to another "
                         "server).", code="server_shutdown", headers={"Retry-After": "1"})


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
    while _busy() and loop.time() < deadline and not (hurry and hurry.is_set()):
        await asyncio.sleep(min(POLL, max(0.0, deadline - loop.time())))
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
