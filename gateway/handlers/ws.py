"""WebSocket chat protocol at ``/v1/chat/ws`` (the README's "WebSocket chat" chapter is the
protocol reference).

One socket carries several chat requests at once, each tagged with the client's own
``id``. Every request runs as its own asyncio task through the same path as the SSE
API (:class:`gateway.relay.pipeline.RequestPipeline`: validate -> build -> admit, then
:class:`gateway.relay.streaming.Generation` run -> usage), so limits, usage recording
(``transport="ws"``, metadata only) and error codes match.

Client -> server: ``auth``, ``chat``, ``cancel``, ``ping``.
Server -> client: ``ready``, ``start``, ``delta``, ``done``, ``cancelled``, ``error``, ``pong``.

Auth: ``Authorization: Bearer`` on the upgrade request (programs); the dashboard session
cookie (browsers) with a strict Origin check; or an ``auth`` first message carrying the
key (clients that cannot set headers). Backpressure: each delta waits until it is
written to the socket, so a client that stops reading pauses its generations and the
gateway buffers at most one message per in-flight request (``send_timeout`` then drops it).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
import weakref
from typing import Any, Awaitable

import tornado.httputil
import tornado.web
import tornado.websocket

from gateway.obs import metrics

from gateway.http import tornado_compat
from gateway.errors import APIError, ErrorRenderer, error_message, internal_error
from gateway.relay.pipeline import RequestPipeline
from gateway.store import StoreError
from gateway.relay.streaming import ClientGone
from gateway.types import Chunk, Principal
from gateway.relay.validation import OFFLOAD_BYTES, loads, loads_async

log = logging.getLogger("allyoucantoken.ws")

# Close codes (4000-4999 are for applications, RFC 6455 section 7.4.2).
CLOSE_UNAUTHORIZED = 4401
CLOSE_IDLE = 4408
CLOSE_SLOW_READER = 4429
CLOSE_GOING_AWAY = 1001
CLOSE_INVALID_DATA = 1007
CLOSE_TRY_AGAIN_LATER = 1013

# Open sockets of this process, so that a shutdown can say goodbye properly.
OPEN_SOCKETS: "weakref.WeakSet[ChatSocketHandler]" = weakref.WeakSet()


def _goodbye(handler: "ChatSocketHandler") -> None:
    """Tell the client why (an error message with no id), then close with 1001."""
    handler._send_nowait(error_message(APIError(
        503, "The server is shutting down; reconnect and retry.", code="server_shutdown")))
    handler.close(CLOSE_GOING_AWAY, "server shutting down")


def begin_drain() -> None:
    """SIGTERM: sockets with nothing running close now; the others take no new request
    and close as soon as their last one ends (``_request_done``)."""
    for handler in list(OPEN_SOCKETS):
        if not handler.tasks:
            _goodbye(handler)


def close_all_sockets() -> None:
    """End of the drain: each request still running gets an ``error`` message
    (``server_shutdown``) and is cancelled (recorded as cut off, 499); then each socket
    gets the goodbye and close code 1001."""
    from gateway.http.drain import shutdown_error
    for handler in list(OPEN_SOCKETS):
        running = [(rid, t) for rid, t in handler.tasks.items() if not t.done()]
        for req_id, _task in running:
            handler._send_nowait(error_message(shutdown_error(), req_id))
        _goodbye(handler)
        for _req_id, task in running:
            task.cancel()


MAX_ID_LENGTH = 128
HARD_CAP_FACTOR = 4   # frames above HARD_CAP_FACTOR * max_message_bytes close the socket (1009)


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


_DELTA_FIELDS = ("tool_calls", "reasoning_content", "refusal")


def delta_message(req_id: Any, chunk: Chunk) -> dict[str, Any] | None:
    """The ``delta`` message for one chunk, or None when it carries no output:
    ``content`` (text), and as the OpenAI delta has them ``tool_calls`` (with index, id,
    name and arguments pieces), ``reasoning_content``, ``refusal``; ``index`` (the
    choice) when not 0; ``logprobs`` when the request asked for them."""
    delta = chunk.delta
    text = chunk.text if delta is None else (delta.get("content") or "")
    msg: dict[str, Any] = {"type": "delta", "id": req_id}
    if text:
        msg["content"] = text
    if delta:
        for key in _DELTA_FIELDS:
            if delta.get(key):
                msg[key] = delta[key]
    if len(msg) == 2:
        return None
    if chunk.index:
        msg["index"] = chunk.index
    if chunk.logprobs is not None:
        msg["logprobs"] = chunk.logprobs
    return msg


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, without a trailing slash."""
    return origin.strip().rstrip("/").lower()


def origin_allowed(origin: str, host: str, allowed: list[str]) -> bool:
    """Same host as the request (as Tornado checks it) or listed in ``allowed_origins``."""
    if urllib.parse.urlsplit(origin).netloc.lower() == host.lower() and host:
        return True
    return normalize_origin(origin) in {normalize_origin(a) for a in allowed}


def _bad_id(req_id: Any) -> bool:
    if isinstance(req_id, bool) or not isinstance(req_id, (str, int)):
        return True
    return isinstance(req_id, str) and not 0 < len(req_id) <= MAX_ID_LENGTH


class _StrictUTF8Protocol(tornado_compat.WebSocketProtocol13Hooks):
    """RFC 6455 section 8.1: a text message that is not valid UTF-8 closes the socket with
    1007. (Tornado drops the connection without a close frame, which clients see as 1006.)"""

    def handle_message(self, opcode: int, data: bytes):
        if opcode == 0x1 and not self.client_terminated and not self.frame_compressed:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                self.close(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                return None
        return super().handle_message(opcode, data)


class ChatSocketHandler(ErrorRenderer, tornado.websocket.WebSocketHandler):
    """``/v1/chat/ws``: streaming chat over one WebSocket, several requests in flight.

    A refused upgrade is answered as the JSON API answers errors (:class:`ErrorRenderer`);
    errors once the socket is open are ``error`` messages (:func:`error_message`)."""

    error_log = log
    quiet_errors = (APIError, tornado.web.HTTPError)

    def initialize(self, gateway) -> None:
        self.gateway = gateway
        self.ws_config = gateway.config.websocket
        self.auth_request = None            # what gateway.authenticate() re-checks per request
        self.auth_via = ""
        self.tasks: dict[Any, asyncio.Task] = {}
        self.models: dict[Any, str | None] = {}   # for the request metrics
        self.cancel_requested: set[Any] = set()
        self.last_activity = time.monotonic()
        self.opened_at = self.last_activity
        self.watchdog: asyncio.Task | None = None
        self.socket_closed = False

    # -- handshake --------------------------------------------------------------
    def set_default_headers(self) -> None:
        self.clear_header("Server")

    async def prepare(self) -> None:
        """Check the upgrade, the Origin and the credentials before accepting the socket."""
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise APIError(400, "This endpoint speaks WebSocket only: connect with a "
                                "WebSocket client (Upgrade: websocket).",
                           code="websocket_upgrade_required")
        origin = self.request.headers.get("Origin")
        if origin is not None and not origin_allowed(origin, self.request.host or "",
                                                     self.ws_config.allowed_origins):
            raise APIError(403, "WebSocket connections from this origin are not allowed.",
                           code="origin_not_allowed")
        principal = await self.gateway.authenticate(self.request)  # may raise 401/403
        if principal is not None:
            if principal.via == "session" and origin is None:
                # A session cookie is ambient: only a browser page of an allowed origin may use it.
                raise APIError(403, "Session-authenticated WebSocket connections must come "
                                    "from a browser page on an allowed origin.",
                               code="origin_not_allowed")
            self.auth_request = self.request
            self.auth_via = principal.via

    def get_websocket_protocol(self):
        protocol = super().get_websocket_protocol()
        if type(protocol) is tornado.websocket.WebSocketProtocol13:
            protocol.__class__ = _StrictUTF8Protocol   # same state, stricter text frames
        return protocol

    def check_origin(self, origin: str) -> bool:
        """The Origin was already checked, strictly, in prepare()."""
        return True

    @property
    def max_message_size(self) -> int:
        return HARD_CAP_FACTOR * self.ws_config.max_message_bytes

    @property
    def ping_interval(self) -> float | None:
        return self.ws_config.ping_interval or None

    def get_compression_options(self) -> None:
        return None   # no per-message deflate: it hides message sizes from the caps

    def open(self) -> None:
        OPEN_SOCKETS.add(self)
        self.set_nodelay(True)
        self.watchdog = asyncio.ensure_future(self._watch())
        self._send_nowait({"type": "ready", "authenticated": self.auth_request is not None,
                           "max_in_flight": self.ws_config.max_in_flight,
                           "max_message_bytes": self.ws_config.max_message_bytes})

    # -- sending ----------------------------------------------------------------
    def _send_nowait(self, msg: dict[str, Any]) -> None:
        """Queue a small control message; never raises when the socket is gone."""
        if self.socket_closed:
            return
        try:
            fut = self.write_message(_dumps(msg))
        except tornado.websocket.WebSocketClosedError:
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _send(self, msg: dict[str, Any]) -> None:
        """Write one message and wait until the socket took it (backpressure)."""
        if self.socket_closed:
            raise ClientGone()
        try:
            fut = self.write_message(_dumps(msg))
            await asyncio.wait_for(fut, self.ws_config.send_timeout)
        except tornado.websocket.WebSocketClosedError:
            raise ClientGone() from None
        except TimeoutError:
            log.info("dropping a WebSocket client that read nothing for %.0fs",
                     self.ws_config.send_timeout)
            self.close(CLOSE_SLOW_READER, "client too slow")
            raise ClientGone() from None

    # -- receiving --------------------------------------------------------------
    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        """Dispatch one client message; work runs in tasks so reading never stalls.
        A large message is decoded in a worker thread; Tornado reads the next message
        only after that (the returned awaitable), so messages keep their order."""
        self.last_activity = time.monotonic()
        if self.socket_closed or self.ws_connection is None or self.ws_connection.is_closing():
            return None   # we are closing: nothing new starts
        try:
            size = self._check_size(message)
            if size > OFFLOAD_BYTES:
                return self._dispatch_large(message, size)
            self._dispatch(loads(message, "message"), size)
        except Exception as exc:  # noqa: BLE001 - an error message, never a dropped socket
            self._message_failed(exc)
        return None

    async def _dispatch_large(self, message: str, size: int) -> None:
        try:
            self._dispatch(await loads_async(message, "message"), size)
        except Exception as exc:  # noqa: BLE001
            self._message_failed(exc)

    def _message_failed(self, exc: Exception) -> None:
        if isinstance(exc, APIError):
            return self._send_nowait(error_message(exc, getattr(exc, "req_id", None)))
        log.error("WebSocket message failed: %s", type(exc).__name__)
        self._send_nowait(error_message(internal_error("message")))

    def _check_size(self, message: str | bytes) -> int:
        """The message's size in bytes; 400 for binary, 413 over max_message_bytes."""
        if isinstance(message, bytes):
            raise APIError(400, "Binary messages are not supported: send JSON text messages.",
                           code="invalid_message")
        limit = self.ws_config.max_message_bytes
        size = len(message)
        if size > limit or (4 * size > limit and len(message.encode("utf-8")) > limit):
            raise APIError(413, f"Message too large: the limit is {limit} bytes.",
                           code="message_too_large")
        return size

    def _dispatch(self, msg: Any, size: int) -> None:
        if not isinstance(msg, dict):
            raise APIError(400, "A message must be a JSON object with a `type`.",
                           code="invalid_message")
        kind = msg.get("type")
        req_id = msg.get("id")
        if kind == "ping":
            return self._send_nowait({"type": "pong", "id": req_id if not _bad_id(req_id)
                                      else None})
        if kind == "auth":
            return self._start_auth(msg)
        if kind not in ("chat", "cancel"):
            err = APIError(400, f"Unknown message type {str(kind)[:40]!r}: expected chat, "
                                "cancel, ping or auth.", param="type", code="unknown_message_type")
            err.req_id = req_id if not _bad_id(req_id) else None
            raise err
        if _bad_id(req_id):
            raise APIError(400, f"Each {kind} message needs an `id`: a string of 1 to "
                                f"{MAX_ID_LENGTH} characters or an integer.", param="id",
                           code="invalid_id")
        if kind == "cancel":
            return self._cancel(req_id)
        self._start_chat(req_id, msg, size)

    def _cancel(self, req_id: Any) -> None:
        task = self.tasks.get(req_id)
        if task is None:
            err = APIError(404, f"No request with id {req_id!r} is in flight.", param="id",
                           code="request_not_found")
            err.req_id = req_id
            raise err
        self.cancel_requested.add(req_id)
        task.cancel()   # closes the backend stream at once (Generation.run)

    def _start_chat(self, req_id: Any, msg: dict[str, Any], size: int) -> None:
        def refuse(err: APIError) -> None:
            err.req_id = req_id
            raise err
        if self.auth_request is None:
            refuse(APIError(401, "Not authenticated: send an `auth` message with your API key "
                                 "first, or connect with 'Authorization: Bearer YOUR_KEY'.",
                            code="missing_api_key"))
        if self.gateway.draining:
            from gateway.http.drain import shutdown_error
            refuse(shutdown_error())
        if req_id in self.tasks:
            # Tagged with no id: that id's messages belong to the request already running.
            raise APIError(400, f"A request with id {req_id!r} is already in flight; this "
                                "new one was ignored.", param="id", code="duplicate_id")
        if len(self.tasks) >= self.ws_config.max_in_flight:
            refuse(APIError(429, f"Too many requests in flight on this socket: the limit is "
                                 f"{self.ws_config.max_in_flight}. Wait for one to finish or "
                                 "cancel one.", code="too_many_in_flight"))
        body = msg.get("body")
        if not isinstance(body, dict):
            refuse(APIError(400, "A chat message needs a `body`: an OpenAI chat completions "
                                 "request object.", param="body", code="invalid_message"))
        started = time.perf_counter()
        task = asyncio.ensure_future(self._chat(req_id, body, started, size))
        self.tasks[req_id] = task
        task.add_done_callback(lambda _t: self._request_done(req_id))

    def _request_done(self, req_id: Any) -> None:
        self.tasks.pop(req_id, None)
        self.cancel_requested.discard(req_id)
        self.last_activity = time.monotonic()
        if self.gateway.draining and not self.tasks:
            _goodbye(self)   # drained: this socket's last request has ended

    # -- one request --------------------------------------------------------------
    async def _chat(self, req_id: Any, body: dict[str, Any], started: float,
                    size: int) -> None:
        """One request, counted in the request metrics under the route ``/v1/chat/ws``."""
        self.models[req_id] = None
        status = 500
        try:
            status = await self._generate(req_id, body, started, size)
        finally:
            metrics.count_request(self.gateway, "/v1/chat/ws", self.models.pop(req_id, None),
                                  status)

    async def _generate(self, req_id: Any, body: dict[str, Any], started: float,
                        size: int = 0) -> int:
        """Authenticate, then the shared pipeline (validate, build, admit), then stream one
        request; always answer once.

        Returns the HTTP-like status of the outcome (499 when cancelled)."""
        pipeline = RequestPipeline(self.gateway, "chat", "ws", started)
        try:
            try:
                principal = await self._principal()
                body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
                gen = await pipeline.start(principal, body, size)
            except APIError as err:
                self._send_nowait(error_message(err, req_id))
                return err.status
            finally:
                self.models[req_id] = pipeline.model
            req = gen.req
            # No await between admit and run: a cancel lands inside run, which settles.
            self._send_nowait({"type": "start", "id": req_id, "request_id": req.request_id,
                               "model": req.model})

            async def emit(chunk: Chunk) -> None:
                msg = delta_message(req_id, chunk)
                if msg is not None:
                    await self._send(msg)

            async def queued(position: int) -> None:
                await self._send({"type": "queued", "id": req_id, "position": position})

            gen.on_queued = queued
            try:
                usage = await gen.run(emit)
            except APIError as err:
                self._send_nowait(error_message(err, req_id))
                return err.status
            self._send_nowait({"type": "done", "id": req_id, "request_id": req.request_id,
                               "finish_reason": gen.finish_reason,
                               "usage": {**usage.as_openai(), "estimated": usage.estimated}})
            return 200
        except (asyncio.CancelledError, ClientGone):
            if req_id in self.cancel_requested and not self.socket_closed:
                usage = pipeline.gen.usage if pipeline.gen is not None else None
                self._send_nowait({"type": "cancelled", "id": req_id, "usage": {
                    **usage.as_openai(), "estimated": usage.estimated} if usage else None})
            return 499
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the client
            log.error("WebSocket request failed: %s", type(exc).__name__)
            self._send_nowait(error_message(internal_error(), req_id))
            return 500

    async def _principal(self) -> Principal:
        """Re-check the credentials for every request, so revocation reaches open sockets."""
        principal = await self.gateway.authenticate(self.auth_request)
        if principal is None:
            if self.auth_via == "session":
                raise APIError(401, "Your dashboard session has ended: sign in again.",
                               code="session_expired")
            raise APIError(401, "Your API key is no longer valid.", code="invalid_api_key")
        return principal

    # -- auth message -------------------------------------------------------------
    def _start_auth(self, msg: dict[str, Any]) -> None:
        if self.auth_request is not None or self.auth_via == "pending":
            raise APIError(400, "This socket is already authenticated.",
                           code="already_authenticated")
        key = msg.get("api_key")
        if not isinstance(key, str) or not key.strip():
            raise APIError(400, "An auth message needs `api_key`: your API key.",
                           param="api_key", code="invalid_message")
        self.auth_via = "pending"
        task = asyncio.ensure_future(self._auth(key.strip()))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _auth(self, key: str) -> None:
        """Check a key sent in an ``auth`` message exactly as the Authorization header."""
        headers = tornado.httputil.HTTPHeaders({"Authorization": f"Bearer {key}",
                                                "Host": self.request.host})
        # The upgrade request's forwarding header travels along, so a key's IP allowlist
        # sees the client behind a trusted proxy exactly as for a key in the header.
        forwarded = self.request.headers.get("X-Forwarded-For")
        if forwarded is not None:
            headers["X-Forwarded-For"] = forwarded
        request = tornado.httputil.HTTPServerRequest(
            start_line=tornado.httputil.RequestStartLine("GET", self.request.uri, "HTTP/1.1"),
            headers=headers)
        request.remote_ip = self.request.remote_ip
        try:
            principal = await self.gateway.authenticate(request)
            if principal is None:
                raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        except APIError as err:
            self._send_nowait(error_message(err))
            self.close(CLOSE_UNAUTHORIZED, "authentication failed")
            return
        except StoreError:
            # Answered at once (not left to the auth timeout): the key could not be
            # looked up while the database is unreachable; the client may retry later.
            self._send_nowait(error_message(APIError(
                503, "The service is temporarily unavailable; please retry shortly.",
                code="service_unavailable")))
            self.close(CLOSE_TRY_AGAIN_LATER, "database unavailable")
            return
        self.auth_request, self.auth_via = request, principal.via
        self._send_nowait({"type": "authenticated"})

    # -- timers and closing -------------------------------------------------------
    async def _watch(self) -> None:
        """Close sockets that never authenticate, or sit idle with nothing running."""
        cfg = self.ws_config
        while not self.socket_closed:
            now = time.monotonic()
            if self.auth_request is None:
                due = self.opened_at + cfg.auth_timeout
                if now >= due:
                    self._send_nowait(error_message(APIError(
                        401, f"Not authenticated within {cfg.auth_timeout:g}s.",
                        code="auth_timeout")))
                    return self.close(CLOSE_UNAUTHORIZED, "authentication timeout")
            else:
                due = self.last_activity + cfg.idle_timeout
                if self.tasks:
                    due = now + cfg.idle_timeout
                elif now >= due:
                    self._send_nowait(error_message(APIError(
                        408, f"Closing an idle connection after {cfg.idle_timeout:g}s.",
                        type="timeout_error", code="idle_timeout")))
                    return self.close(CLOSE_IDLE, "idle timeout")
            await asyncio.sleep(max(0.05, due - now))   # one wake-up per deadline

    def on_close(self) -> None:
        """The client left (or we closed): stop every generation at once."""
        self.socket_closed = True
        OPEN_SOCKETS.discard(self)
        for task in list(self.tasks.values()):
            task.cancel()
        if self.watchdog is not None:
            self.watchdog.cancel()


ROUTES = [(r"/v1/chat/ws", ChatSocketHandler)]
