"""A lean HTTP/1.1 keep-alive client for the upstreams of ``openai_compatible``.

The relay's upstream side needs little of a general HTTP client: POST a JSON body, read
the status, then take the response body as it arrives (an SSE stream, or a small JSON
document), and keep connections alive between requests. This module does just that on
an ``asyncio.Protocol``, so a request costs a handful of Python calls and an open stream
a few hundred bytes (one protocol object and its transport), where a general client
builds request and response objects, header multidicts, a parser, stream readers and
timers for each request.

- :class:`Pool`: the connections to one upstream (``http://`` or ``https://`` root,
  with an optional path prefix such as ``/v1``). At most ``limit`` requests run at once
  (one connection each); a request that finds no free slot waits up to its
  ``pool_timeout`` and then raises :class:`PoolTimeout`. Idle connections are kept
  for ``keepalive_timeout`` seconds and reused most-recently-used first; a request sent
  on a reused connection that the upstream had just closed (nothing came back) is sent
  once more on a new connection, as the request never ran.
- :class:`Connection`: the protocol, and the handle of one response: ``status``,
  ``content_type``, ``await read()`` (the next body bytes, whatever arrived since the
  last call, with Content-Length or chunked framing removed; ``b""`` at the end),
  ``await read_all()``, then ``release()`` (back to the pool when the body was read to
  its end and the upstream keeps the connection alive, else closed) or ``close()``.
  The parsing of the response is :class:`plugins.backends.http_response.ResponseParser`
  (Connection subclasses it, so no call stands between the socket and the parser); this
  module is the sockets, waiting, flow control and pooling around it.

TLS: ``https://`` roots are verified against the system's CAs, or the ``ssl_context``
given (``openai_compatible``'s ``ca_file`` option builds one trusting a private CA), with
the URL's host name checked against the certificate.

Proxies (``proxy=``): ``"env"`` (the default) takes ``HTTPS_PROXY`` for ``https://``
roots and ``HTTP_PROXY`` for ``http://`` ones (lower-case names win, as in curl and
urllib), unless ``NO_PROXY`` matches the host (names, ``.suffix`` domains, IP literals,
``*``); loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) never go through an
environment proxy. ``""`` or ``None``: always direct. A URL (``http://[user:pass@]host:port``):
that proxy for every request. An ``https://`` upstream is reached through a ``CONNECT``
tunnel (TLS end to end, the proxy sees only the host name); an ``http://`` one by sending
each request in absolute form (``POST http://host:port/v1/... HTTP/1.1``) to the proxy,
over kept-alive connections to it. Proxy credentials go in ``Proxy-Authorization``
(Basic), never to the upstream. A proxy that refuses a tunnel raises :class:`ProxyError`.

Errors: :class:`ConnectTimeout` (no TCP connection, tunnel or TLS handshake within
``connect_timeout``), :class:`ConnectionClosed` (the upstream closed the connection
before the response was complete), :class:`BadResponse` (not parseable as HTTP/1.x),
:class:`ProxyError`, ``ssl.SSLCertVerificationError`` (a certificate that does not verify:
an ``OSError``), ``TimeoutError`` (no response headers, or no body bytes, within
``read_timeout`` of waiting), and the ``OSError`` of a refused or failed connection. All
but ``PoolTimeout`` and ``TimeoutError`` are ``ConnectionError`` or ``OSError``
subclasses.

A slow reader pauses the socket (at 256 KiB buffered) instead of buffering without
bound. Read timeouts use one timer per connection, re-armed only when it fires, not a
timer per read. Plain ``http://`` connections (direct or to an http proxy) use
:class:`SocketTransport`, a minimal transport on the event loop's reader callbacks
(asyncio's own keeps a write deque, extra info and more per connection: about 1.6 KB per
open stream more); ``https://`` ones use asyncio's TLS transport.

What it does not do (it is not a general HTTP client; use ``aiohttp`` or ``httpx`` where
these matter):

- HTTP/1.1 only (HTTP/1.0 responses are read): no HTTP/2 or HTTP/3, no ALPN offered, no
  pipelining (one request at a time per connection);
- no redirects (a 3xx is returned as is), no cookies, no authentication beyond the URL's
  ``user:pass`` (Basic) and the headers given;
- no compression: it sends ``Accept-Encoding: identity`` and decodes no
  ``Content-Encoding``;
- no request streaming or ``Expect: 100-continue``: the body is one ``bytes`` object;
- response headers other than Content-Type, Content-Length, Transfer-Encoding and
  Connection are parsed for framing only and not kept; trailers are dropped;
- no SOCKS proxies, no https:// (TLS to the proxy) proxies, no ``ALL_PROXY``, no PAC;
  ``NO_PROXY`` takes no CIDR ranges;
- no client certificates unless set on the ``ssl_context`` given; DNS is resolved per
  new connection (no cache), and no Happy Eyeballs (addresses are tried in order).
"""
from __future__ import annotations

import asyncio
import base64
import collections
import contextvars
import ipaddress
import socket
import ssl as ssl_module
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

from plugins.backends.http_response import CHUNKED as _CHUNKED
from plugins.backends.http_response import DONE as _DONE
from plugins.backends.http_response import HEAD as _HEAD
from plugins.backends.http_response import IDLE as _IDLE
from plugins.backends.http_response import LENGTH as _LENGTH
from plugins.backends.http_response import UNTIL_CLOSE as _UNTIL_CLOSE
from plugins.backends.http_response import BadResponse, ResponseParser

__all__ = [
    "BadResponse",
    "ConnectTimeout",
    "Connection",
    "ConnectionClosed",
    "Pool",
    "PoolTimeout",
    "ProxyError",
    "proxy_for",
]

HIGH_WATER = 256 * 1024       # body bytes buffered before the socket is paused
DRAIN_WAIT = 1.0              # seconds a released connection may take to finish its body
USER_AGENT = "allyoucantoken"


class PoolTimeout(Exception):
    """No connection slot became free within the pool timeout."""


class ConnectTimeout(ConnectionError):
    """The TCP (or TLS) connection was not established within the connect timeout."""


class ConnectionClosed(ConnectionError):
    """The upstream closed the connection before the response was complete."""


class ProxyError(ConnectionError):
    """The proxy refused to open a tunnel to the upstream (its status is in the text)."""


class SocketTransport:
    """The part of ``asyncio.Transport`` that :class:`Connection` uses, on a connected
    non-blocking socket: reads go to the protocol from the loop's reader callback, a
    write goes out at once (the rest, if the socket is full, when it can take it)."""

    __slots__ = ("_pending", "closing", "fd", "loop", "protocol", "reading", "sock")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: Connection) -> None:
        self.loop, self.sock, self.fd, self.protocol = loop, sock, sock.fileno(), protocol
        self.closing = False
        self.reading = True
        self._pending = b""       # request bytes the socket did not take yet
        loop.add_reader(self.fd, self._read_ready)
        protocol.connection_made(self)

    def _read_ready(self) -> None:
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        if data:
            self.protocol.data_received(data)
        else:
            self.protocol.eof_received()
            self._close(None)

    def write(self, data: bytes) -> None:
        if self.closing or not data:
            return
        if self._pending:
            self._pending += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._close(exc)
            return
        if sent < len(data):
            self._pending = data[sent:]
            self.loop.add_writer(self.fd, self._write_ready)

    def _write_ready(self) -> None:
        try:
            sent = self.sock.send(self._pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(exc)
            return
        self._pending = self._pending[sent:]
        if not self._pending:
            self.loop.remove_writer(self.fd)

    def pause_reading(self) -> None:
        if self.reading and not self.closing:
            self.reading = False
            self.loop.remove_reader(self.fd)

    def resume_reading(self) -> None:
        if not self.reading and not self.closing:
            self.reading = True
            self.loop.add_reader(self.fd, self._read_ready)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self._close(None)

    abort = close

    def _close(self, exc: BaseException | None) -> None:
        if self.closing:
            return
        self.closing = True
        if self.reading:
            self.loop.remove_reader(self.fd)
        if self._pending:
            self.loop.remove_writer(self.fd)
            self._pending = b""
        self.sock.close()
        self.loop.call_soon(self.protocol.connection_lost, exc)


def _numeric_address(host: str, port: int):
    """(family, address) when ``host`` is an IP address literal, else None."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, (host, port)
    return None


class Connection(ResponseParser, asyncio.Protocol):
    """One keep-alive connection to an upstream; also the handle of its current response.
    The response parsing is :class:`http_response.ResponseParser`'s; this class adds the
    socket, the waiting, flow control and the pool."""

    __slots__ = (
        "_closed",
        "_deadline",
        "_draining",
        "_exc",
        "_held",
        "_paused",
        "_size",
        "_timer",
        "_waiter",
        "idle_since",
        "pool",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        ResponseParser.__init__(self)
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self._size = 0                # decoded body bytes buffered, not read yet
        self._paused = False
        self._waiter: asyncio.Future | None = None
        self._exc: BaseException | None = None
        self._closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._held = False            # holds one of the pool's slots (a request is on it)
        self._draining = False        # released before its body's last bytes came

    # -- asyncio.Protocol (data_received is the parser's) --------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self._closed = True
        if self._state == _UNTIL_CLOSE:           # the body ends with the connection
            self._state = _DONE
        elif self._state not in (_DONE, _IDLE) and self._exc is None:
            self._exc = ConnectionClosed("the upstream closed the connection"
                                         + (f" ({exc})" if exc else ""))
        self._cancel_timer()
        self._wake()

    def eof_received(self):
        return False   # close our side too (connection_lost follows)

    def pause_writing(self) -> None:   # the request body is written in one go
        pass

    def resume_writing(self) -> None:
        pass

    # -- the parser's hooks ------------------------------------------------------------
    def _push(self, data: bytes) -> None:
        self._body.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not self._paused:
            self._pause()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(None)

    def _pushed(self, n: int) -> None:
        # the chunked decoder appended n bytes to _body (and may have reached the end)
        self._size += n
        if self._size > HIGH_WATER and not self._paused:
            self._pause()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(None)
        elif self._draining and self._state == _DONE:
            self._drained()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(None)
        elif self._draining and self._state == _DONE:
            self._drained()

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        self.keep_alive = False
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _unexpected(self) -> None:
        self.keep_alive = False
        if self._state == _IDLE and self.transport is not None:
            self.transport.close()

    def _pause(self) -> None:
        self._paused = True
        self.transport.pause_reading()

    # -- waiting, with the read timeout ------------------------------------------
    def _waiting(self) -> asyncio.Future:
        """A future for the caller to await: done when something arrives, or failed with
        TimeoutError after ``read_timeout`` (a plain method: no coroutine frame kept per
        waiting stream)."""
        loop = self.pool.loop
        waiter = self._waiter = loop.create_future()
        self._deadline = loop.time() + self.pool.read_timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._on_timer,
                                      context=self.pool.timer_context)
        return waiter

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return          # nobody waits: the next wait arms the timer again
        loop = self.pool.loop
        if loop.time() >= self._deadline - 0.001:
            self._waiter = None
            waiter.set_exception(TimeoutError())
        else:
            self._timer = loop.call_at(self._deadline, self._on_timer,
                                      context=self.pool.timer_context)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the request/response cycle -------------------------------------------------
    def _start(self, data: bytes, head_only: bool) -> None:
        self.status, self.content_type = 0, ""
        self._draining = False
        self.got_bytes = False
        self._state, self._buf, self._head_only = _HEAD, b"", head_only
        self._exc = None
        self._size = 0
        self.transport.write(data)

    async def _response(self) -> None:
        """Wait for the status line and headers."""
        while self._state == _HEAD:
            if self._exc is not None:
                raise self._exc
            await self._waiting()
        if self._exc is not None and self.status == 0:
            raise self._exc

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call (waits for some); ``b""`` once
        the whole body was read."""
        while True:
            data = self.read_nowait()
            if data is not None:
                return data
            await self._waiting()

    def read_nowait(self) -> bytes | None:
        """Like :meth:`read` without waiting: None when nothing arrived yet (then await
        :meth:`wait` and call again). A relay loop written this way keeps no coroutine
        frame per waiting stream."""
        body = self._body
        if body:
            data = body[0] if len(body) == 1 else b"".join(body)
            body.clear()
            self._size = 0
            if self._paused and not self._closed:
                self._paused = False
                self.transport.resume_reading()
            return data
        if self._state == _DONE:
            return b""
        if self._exc is not None:
            raise self._exc
        if self._closed:
            raise ConnectionClosed("the upstream closed the connection")
        return None

    def wait(self) -> asyncio.Future:
        """A future done when more of the body (or its end, or an error) arrived, or
        failed with ``TimeoutError`` after ``read_timeout``."""
        return self._waiting()

    async def read_all(self, limit: int | None = None) -> bytes:
        """The rest of the body (``BadResponse`` beyond ``limit`` bytes)."""
        parts, size = [], 0
        while True:
            data = await self.read()
            if not data:
                return b"".join(parts)
            parts.append(data)
            size += len(data)
            if limit is not None and size > limit:
                raise BadResponse(f"response body larger than {limit} bytes")

    @property
    def reusable(self) -> bool:
        return (self._state == _DONE and self.keep_alive and not self._closed
                and not self._body and not self._buf and self._exc is None)

    def release(self) -> None:
        """Done with the response: the connection goes back to the pool when its body was
        read to the end and the upstream keeps it alive; otherwise it is closed.

        A caller may stop at the end of what it wanted (an SSE stream's ``[DONE]``)
        before the body's last bytes (a chunked body's terminator) arrived: they are
        awaited in the background, up to ``DRAIN_WAIT`` seconds, and then the connection
        is pooled (or closed, when they do not come)."""
        if not self._held:
            return
        self._held = False
        self.pool._release_slot()
        if self.reusable:
            self._to_pool()
        elif (self._state in (_LENGTH, _CHUNKED) and self.keep_alive and not self._closed
              and self._exc is None):
            self._draining = True
            self._body.clear()
            self._size = 0
            self._cancel_timer()
            self._timer = self.pool.loop.call_later(DRAIN_WAIT, self._close_transport,
                                                    context=self.pool.timer_context)
            if self._paused:
                self._paused = False
                self.transport.resume_reading()
        else:
            self._close_transport()

    def _drained(self) -> None:
        self._draining = False
        self._body.clear()
        self._size = 0
        if self.reusable:
            self._to_pool()
        else:
            self._close_transport()

    def _to_pool(self) -> None:
        self._cancel_timer()
        self._state = _IDLE
        self.pool._put_back(self)

    def close(self) -> None:
        """Close the connection (the upstream sees the client go) and free its slot."""
        self._close_transport()
        if self._held:
            self._held = False
            self.pool._release_slot()

    def _close_transport(self) -> None:
        self.keep_alive = False
        self._cancel_timer()
        if self.transport is not None and not self._closed:
            self._closed = True
            self.transport.close()


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_for(url: str) -> str | None:
    """The proxy URL the environment names for ``url`` (``HTTPS_PROXY`` or
    ``HTTP_PROXY``, by its scheme; urllib's reading of them), or None: no such variable,
    ``NO_PROXY`` matches the host, or the host is loopback."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _is_loopback(host):
        return None
    proxies = getproxies_environment()
    proxy = proxies.get(parts.scheme)
    if not proxy:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if proxies.get("no") and proxy_bypass_environment(hostport, proxies):
        return None
    return proxy


def _parse_proxy(proxy: str) -> tuple[str, int, str]:
    """(host, port, ``Proxy-Authorization`` header line or "") of an http:// proxy URL."""
    if "://" not in proxy:
        proxy = "http://" + proxy        # "host:3128", as curl takes it
    parts = urlsplit(proxy)
    if parts.scheme != "http":
        raise ValueError(f"unsupported proxy {proxy!r}: only http:// proxies "
                         "(CONNECT for https:// upstreams)")
    if not parts.hostname:
        raise ValueError(f"no host in proxy URL {proxy!r}")
    auth = ""
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = ("Proxy-Authorization: Basic "
                + base64.b64encode(creds.encode()).decode() + "\r\n")
    return parts.hostname, parts.port or 80, auth


class Pool:
    """Keep-alive connections to one upstream root URL; see the module docstring."""

    def __init__(self, base_url: str, *, limit: int = 4096, connect_timeout: float = 5.0,
                 read_timeout: float = 120.0, keepalive_timeout: float = 4.0,
                 headers: dict[str, str] | None = None,
                 ssl_context: ssl_module.SSLContext | None = None,
                 proxy: str | None = "env") -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {base_url!r} (http or https)")
        if not parts.hostname:
            raise ValueError(f"no host in {base_url!r}")
        self.url = base_url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        default_port = 443 if self.https else 80
        self.port = parts.port or default_port
        host = f"[{self.host}]" if ":" in self.host else self.host
        host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.prefix = parts.path.rstrip("/")
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self._ssl = (ssl_context or ssl_module.create_default_context()) if self.https else None
        if proxy == "env":
            proxy = proxy_for(base_url)
        self.proxy = proxy or None          # the proxy URL in use, if any
        self._target = self.prefix          # the request target before the path
        self._proxy_auth = ""
        if self.proxy:
            self._proxy_host, self._proxy_port, self._proxy_auth = _parse_proxy(self.proxy)
            if not self.https:              # absolute form, to the proxy
                self._target = f"http://{host_header}{self.prefix}"
        fixed = {"Host": host_header, "User-Agent": USER_AGENT, "Accept": "*/*",
                 "Accept-Encoding": "identity"}
        if parts.username is not None:
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            fixed["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
        fixed.update(headers or {})
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        if self.proxy and not self.https:
            self._fixed += self._proxy_auth
        self._authority = f"{host}:{self.port}"   # CONNECT's target
        self._idle: collections.deque[Connection] = collections.deque()
        self._slots: asyncio.Semaphore | None = None
        self._prune_timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # The connections' timers need no context variables: one empty context for them
        # all (call_at otherwise copies the current one for every timer of every stream).
        # One per pool, as a pool lives on one event loop (a context cannot be entered
        # by two threads at once).
        self.timer_context = contextvars.Context()
        self.in_use = 0       # requests holding a slot (= busy connections)
        self.opened = 0       # connections opened so far (for tests and stats)
        self._closing = False

    @property
    def idle(self) -> int:
        """Idle connections kept for reuse (some may have been closed by the upstream)."""
        return len(self._idle)

    async def request(self, method: str, path: str, body: bytes = b"", *,
                      content_type: str = "application/json",
                      pool_timeout: float | None = None) -> Connection:
        """Send a request; returns the connection once the response headers arrived. The
        caller reads the body and must ``release()`` or ``close()`` it."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self._slots = asyncio.Semaphore(self.limit)
        if self._closing:
            raise ConnectionClosed("the pool is closed")
        slots = self._slots
        if slots.locked():
            try:
                await asyncio.wait_for(slots.acquire(), pool_timeout)
            except TimeoutError:
                raise PoolTimeout(f"no free connection within {pool_timeout}s") from None
        else:
            await slots.acquire()          # a slot is free: no timer needed
        self.in_use += 1
        head = (f"{method} {self._target}{path} HTTP/1.1\r\n{self._fixed}"
                + (f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
                   if body or method in ("POST", "PUT", "PATCH") else "\r\n")).encode("latin-1")
        data = head + body if len(body) < 65536 else None
        conn = None
        try:
            conn = self._reuse()
            if conn is not None:
                try:
                    await self._send(conn, data, head, body, method == "HEAD")
                    return conn
                except ConnectionError:
                    if conn.got_bytes:
                        raise
                    # The upstream had just closed this idle connection; the request
                    # never ran. Once more, on a new connection.
                    conn._close_transport()
                    conn._held = False
            conn = await self._connect()
            await self._send(conn, data, head, body, method == "HEAD")
            return conn
        except BaseException:
            if conn is not None:
                conn._close_transport()
                conn._held = False
            self._release_slot()
            raise

    async def _send(self, conn: Connection, data, head: bytes, body: bytes,
                    head_only: bool) -> None:
        conn._held = True
        if data is not None:
            conn._start(data, head_only)
        else:
            conn._start(head, head_only)
            conn.transport.write(body)
        await conn._response()

    def _reuse(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            if conn._closed or now - conn.idle_since > self.keepalive_timeout:
                conn._close_transport()
                continue
            return conn
        return None

    async def _connect(self) -> Connection:
        loop = self.loop
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.proxy:
                    sock = await self._open_socket(self._proxy_host, self._proxy_port)
                    if self._ssl is None:         # absolute-form requests to the proxy
                        conn = Connection(self)
                        SocketTransport(loop, sock, conn)
                    else:
                        try:
                            await self._tunnel(sock)
                            _, conn = await loop.create_connection(
                                lambda: Connection(self), sock=sock, ssl=self._ssl,
                                server_hostname=self.host)
                        except BaseException:
                            sock.close()
                            raise
                elif self._ssl is not None:
                    _, conn = await loop.create_connection(
                        lambda: Connection(self), self.host, self.port, ssl=self._ssl,
                        server_hostname=self.host)
                else:
                    conn = Connection(self)
                    SocketTransport(loop, await self._open_socket(self.host, self.port),
                                    conn)
        except TimeoutError:
            via = f" through the proxy {self._proxy_host}:{self._proxy_port}" if self.proxy else ""
            raise ConnectTimeout(f"no connection to {self.host}:{self.port}{via} within "
                                 f"{self.connect_timeout:g}s") from None
        self.opened += 1
        return conn

    async def _open_socket(self, host: str, port: int) -> socket.socket:
        """A connected non-blocking TCP socket to host:port (each address in turn)."""
        loop = self.loop
        target = _numeric_address(host, port)
        if target is not None:
            targets = [target]
        else:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            targets = [(family, addr) for family, _, _, _, addr in infos]
        error: OSError | None = None
        for family, address in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            return sock
        raise error or OSError(f"cannot resolve {host}")

    async def _tunnel(self, sock: socket.socket) -> None:
        """Ask the proxy on ``sock`` for a CONNECT tunnel to the upstream; returns once
        it answered 2xx (the TLS handshake then goes through the tunnel)."""
        loop = self.loop
        authority = self._authority
        await loop.sock_sendall(sock, (
            f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
            f"User-Agent: {USER_AGENT}\r\n{self._proxy_auth}\r\n").encode("latin-1"))
        parser = ResponseParser()
        parser.start(head_only=True)    # a 2xx to CONNECT has no body
        while not parser.done:
            # 1 byte at a time is not needed: the upstream speaks only after our TLS
            # ClientHello, so nothing follows the proxy's answer yet
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise ProxyError("the proxy closed the connection before answering CONNECT")
            parser.data_received(data)
        if not 200 <= parser.status < 300:
            raise ProxyError(f"the proxy refused CONNECT {authority}: HTTP {parser.status}")

    def _put_back(self, conn: Connection) -> None:
        if self._closing:
            conn._close_transport()
            return
        conn.idle_since = self.loop.time()
        self._idle.append(conn)
        if self._prune_timer is None:
            self._prune_timer = self.loop.call_later(self.keepalive_timeout + 0.05,
                                                     self._prune)

    def _prune(self) -> None:
        """Close connections idle for longer than the keep-alive timeout (oldest first)."""
        self._prune_timer = None
        idle = self._idle
        limit = self.loop.time() - self.keepalive_timeout
        while idle and (idle[0]._closed or idle[0].idle_since <= limit):
            idle.popleft()._close_transport()
        if idle:
            self._prune_timer = self.loop.call_at(
                idle[0].idle_since + self.keepalive_timeout + 0.05, self._prune)

    def _release_slot(self) -> None:
        self.in_use -= 1
        self._slots.release()

    async def close(self) -> None:
        """Close the idle connections; busy ones close when they are released."""
        self._closing = True
        if self._prune_timer is not None:
            self._prune_timer.cancel()
            self._prune_timer = None
        while self._idle:
            self._idle.pop()._close_transport()
        await asyncio.sleep(0)   # let the transports finish closing
