"""Proxies for the lean upstream client (plugins/backends/upstream_http.py), against a
real minimal HTTP proxy on loopback (written here on asyncio streams): ``CONNECT``
tunnels for ``https://`` upstreams, absolute-form requests for ``http://`` ones, from
``HTTPS_PROXY``/``HTTP_PROXY`` or an explicit URL; ``NO_PROXY`` and loopback go direct.

The upstreams are named ``upstream.test``, a name no resolver knows: only the proxy
maps it (to 127.0.0.1), so a request that succeeds went through the proxy."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from types import SimpleNamespace

import pytest

from plugins.backends.openai_compatible import OpenAICompatibleBackend
from plugins.backends.upstream_http import Pool, ProxyError, proxy_for
from tests.backends.test_upstream_tls import (
    client_context,
    make_ca,
    server_context,
    tls_upstream,
)

NAME = "upstream.test"


class Proxy:
    """A minimal forward proxy: CONNECT host:port (a tunnel, bytes both ways), or
    requests in absolute form (``GET http://host:port/path``), rewritten to origin form
    and sent on one upstream connection per client connection (keep-alive both sides).
    ``credentials`` ("user:pass"): anything without that Proxy-Authorization gets 407."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.connections = 0
        self.lines: list[str] = []           # request lines seen (CONNECT, GET http://...)
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    @staticmethod
    def resolve(host: str) -> str:
        return "127.0.0.1" if host == NAME else host

    def _authorized(self, head: bytes) -> bool:
        if self.credentials is None:
            return True
        expected = b"proxy-authorization: basic " + base64.b64encode(
            self.credentials.encode())
        return any(line.lower() == expected.lower() for line in head.split(b"\r\n"))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.connections += 1
        upstream_writer = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                self.lines.append(f"{method} {target}")
                if not self._authorized(head):
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"t\"\r\n"
                                 b"Content-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                if method == "CONNECT":
                    host, port = target.rsplit(":", 1)
                    try:
                        up_reader, up_writer = await asyncio.open_connection(
                            self.resolve(host), int(port))
                    except OSError:
                        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        await writer.drain()
                        continue
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await asyncio.gather(self._pipe(reader, up_writer),
                                         self._pipe(up_reader, writer))
                    return
                # absolute form: http://host:port/path
                assert target.startswith("http://"), target
                authority, _, path = target[7:].partition("/")
                host, _, port = authority.partition(":")
                length = 0
                lines = []
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"proxy-authorization:"):
                        continue                 # for the proxy only
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                    lines.append(line)
                body = await reader.readexactly(length)
                if upstream_writer is None:
                    up_reader, upstream_writer = await asyncio.open_connection(
                        self.resolve(host), int(port or 80))
                    task = asyncio.ensure_future(self._pipe(up_reader, writer))
                    self._tasks.add(task)
                upstream_writer.write(f"{method} /{path} HTTP/1.1\r\n".encode()
                                      + b"\r\n".join(lines) + body)
                await upstream_writer.drain()
        finally:
            if upstream_writer is not None:
                upstream_writer.close()
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()


@contextlib.asynccontextmanager
async def running_proxy(credentials: str | None = None):
    proxy = Proxy(credentials)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for task in proxy._tasks:
            task.cancel()


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY",
                 "no_proxy", "ALL_PROXY", "all_proxy", "REQUEST_METHOD"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


async def stream(pool: Pool, up) -> bytes:
    up.go.set()
    conn = await pool.request("POST", "/chat/completions", b'{"stream":true}')
    assert conn.status == 200 and conn.content_type == "text/event-stream"
    body = await conn.read_all()
    conn.release()
    return body


def done(body: bytes) -> bool:
    return body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") == 6


# -- https upstreams: CONNECT -----------------------------------------------------------

def test_https_through_a_connect_tunnel_from_https_proxy(tmp_path, no_proxy_env):
    ca = make_ca()

    async def go():
        async with running_proxy() as proxy, \
                tls_upstream(server_context(tmp_path, ca, [NAME])) as up:
            no_proxy_env.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
            no_proxy_env.setenv("NO_PROXY", "localhost,.example.org")
            pool = Pool(f"https://{NAME}:{up.port}/v1", ssl_context=client_context(ca))
            assert pool.proxy == f"http://127.0.0.1:{proxy.port}"
            bodies = [await stream(pool, up) for _ in range(3)]
            models = await pool.request("GET", "/models")
            listed = json.loads(await models.read_all())
            models.release()
            opened = pool.opened
            await pool.close()
            return bodies, listed, opened, proxy.connections, proxy.lines, up
    bodies, listed, opened, connections, lines, up = asyncio.run(go())
    assert all(done(b) for b in bodies) and listed["data"][0]["id"] == "tls-model"
    assert opened == 1 and connections == 1          # one tunnel, kept alive
    assert lines == [f"CONNECT {NAME}:{up.port}"]
    assert up.headers[0]["Host"] == f"{NAME}:{up.port}"


def test_the_certificate_is_verified_through_the_tunnel(tmp_path, no_proxy_env):
    """The tunnel carries TLS end to end: an upstream certificate from a CA we do not
    trust is refused even though the proxy itself answered 200."""
    import ssl
    trusted, other = make_ca(), make_ca("Other CA")

    async def go():
        async with running_proxy() as proxy, \
                tls_upstream(server_context(tmp_path, other, [NAME])) as up:
            pool = Pool(f"https://{NAME}:{up.port}/v1", ssl_context=client_context(trusted),
                        proxy=f"http://127.0.0.1:{proxy.port}")
            with pytest.raises(ssl.SSLCertVerificationError):
                await pool.request("GET", "/models")
            in_use = pool.in_use
            await pool.close()
            return in_use, proxy.lines, up.requests
    in_use, lines, requests = asyncio.run(go())
    assert in_use == 0 and len(lines) == 1 and lines[0].startswith("CONNECT ")
    assert requests == []


def test_proxy_credentials_and_refusals(tmp_path, no_proxy_env):
    ca = make_ca()

    async def go():
        async with running_proxy("user:s3cret") as proxy, \
                tls_upstream(server_context(tmp_path, ca, [NAME])) as up:
            url = f"https://{NAME}:{up.port}/v1"
            # no credentials: 407
            pool = Pool(url, ssl_context=client_context(ca),
                        proxy=f"http://127.0.0.1:{proxy.port}")
            with pytest.raises(ProxyError, match="407"):
                await pool.request("GET", "/models")
            refused_in_use = pool.in_use
            # credentials in the proxy URL (percent-encoded as URLs want them)
            pool = Pool(url, ssl_context=client_context(ca),
                        proxy=f"http://user:s3cre%74@127.0.0.1:{proxy.port}")
            body = await stream(pool, up)
            await pool.close()
            # a tunnel to nowhere: the proxy answers 502
            dead = Pool(f"https://{NAME}:1/v1", ssl_context=client_context(ca),
                        proxy=f"http://user:s3cret@127.0.0.1:{proxy.port}")
            with pytest.raises(ProxyError, match="502"):
                await dead.request("GET", "/models")
            return refused_in_use, body, dead.in_use, up.headers
    refused_in_use, body, dead_in_use, headers = asyncio.run(go())
    assert refused_in_use == 0 and dead_in_use == 0 and done(body)
    # the upstream never sees the proxy's credentials
    assert all("Proxy-Authorization" not in h for h in headers)


# -- http upstreams: absolute form --------------------------------------------------------

def test_http_through_the_proxy_in_absolute_form_from_http_proxy(no_proxy_env):
    async def go():
        async with running_proxy("u:p") as proxy, tls_upstream(None) as up:
            no_proxy_env.setenv("http_proxy", f"http://u:p@127.0.0.1:{proxy.port}")
            pool = Pool(f"http://{NAME}:{up.port}/v1",
                        headers={"Authorization": "Bearer upstream-key"})
            bodies = [await stream(pool, up) for _ in range(2)]
            models = await pool.request("GET", "/models")
            listed = json.loads(await models.read_all())
            models.release()
            opened = pool.opened
            await pool.close()
            return bodies, listed, opened, proxy, up
    bodies, listed, opened, proxy, up = asyncio.run(go())
    assert all(done(b) for b in bodies) and listed["data"][0]["id"] == "tls-model"
    base = f"http://{NAME}:{up.port}/v1"
    assert proxy.lines == [f"POST {base}/chat/completions"] * 2 + [f"GET {base}/models"]
    assert opened == 1 and proxy.connections == 1          # kept alive to the proxy
    assert [p for _, p, _ in up.requests] == ["/v1/chat/completions"] * 2 + ["/v1/models"]
    assert all(h["Authorization"] == "Bearer upstream-key" for h in up.headers)
    assert all("Proxy-Authorization" not in h for h in up.headers)


# -- what goes direct ------------------------------------------------------------------------

def test_loopback_and_no_proxy_go_direct(no_proxy_env):
    async def go():
        async with running_proxy() as proxy, tls_upstream(None) as up:
            proxy_url = f"http://127.0.0.1:{proxy.port}"
            no_proxy_env.setenv("HTTP_PROXY", proxy_url)
            no_proxy_env.setenv("HTTPS_PROXY", proxy_url)
            no_proxy_env.setenv("NO_PROXY", "other.example, .test")
            got = []
            for host in ("127.0.0.1", "localhost"):      # loopback: never from the env
                pool = Pool(f"http://{host}:{up.port}/v1")
                assert pool.proxy is None
                got.append(await stream(pool, up))
                await pool.close()
            # NO_PROXY names the domain: direct, so the unknown name does not resolve
            for scheme in ("http", "https"):
                pool = Pool(f"{scheme}://{NAME}:{up.port}/v1")
                assert pool.proxy is None
                with pytest.raises(OSError):
                    await pool.request("GET", "/models")
            seen_before = list(proxy.lines)
            # an explicit proxy applies even to loopback; "" means none
            pool = Pool(f"http://127.0.0.1:{up.port}/v1", proxy=proxy_url)
            got.append(await stream(pool, up))
            await pool.close()
            assert Pool(f"http://{NAME}/v1", proxy="").proxy is None
            return got, seen_before, proxy.lines
    got, seen_before, lines = asyncio.run(go())
    assert all(done(b) for b in got)
    assert seen_before == []
    assert len(lines) == 1 and lines[0].startswith("POST http://127.0.0.1:")


def test_proxy_for_reads_the_environment(no_proxy_env):
    env = no_proxy_env
    assert proxy_for("https://api.example.com/v1") is None
    env.setenv("HTTPS_PROXY", "http://p:3128")
    env.setenv("HTTP_PROXY", "http://q:3128")
    assert proxy_for("https://api.example.com/v1") == "http://p:3128"
    assert proxy_for("http://api.example.com/v1") == "http://q:3128"
    env.setenv("https_proxy", "http://lower:3128")         # lower case wins, as in curl
    assert proxy_for("https://api.example.com/v1") == "http://lower:3128"
    for host in ("127.0.0.1", "127.9.9.9", "[::1]", "localhost", "gpu.localhost"):
        assert proxy_for(f"https://{host}:8000/v1") is None, host
    env.setenv("NO_PROXY", "internal.lan,10.0.0.7")
    assert proxy_for("https://gpu1.internal.lan/v1") is None
    assert proxy_for("http://10.0.0.7:8000/v1") is None
    assert proxy_for("http://10.0.0.8:8000/v1") == "http://q:3128"
    env.setenv("NO_PROXY", "*")
    assert proxy_for("https://api.example.com/v1") is None


def test_unsupported_proxies_are_refused_at_construction():
    for proxy in ("socks5://127.0.0.1:1080", "https://proxy.example:443"):
        with pytest.raises(ValueError, match="only http://"):
            Pool("https://api.example.com/v1", proxy=proxy)
    assert Pool("http://api.example.com/v1", proxy="proxy.example:3128").proxy


def test_openai_compatible_proxy_option(no_proxy_env):
    """The backend's ``proxy`` option reaches its pools (the health probes included)."""
    async def go():
        async with running_proxy() as proxy, tls_upstream(None) as up:
            backend = OpenAICompatibleBackend(SimpleNamespace(
                name="m", options={"base_url": f"http://{NAME}:{up.port}/v1",
                                   "proxy": f"http://127.0.0.1:{proxy.port}",
                                   "health_interval": 60}), None)
            await backend.start()
            try:
                health = await backend.health()
            finally:
                await backend.close()
            return health, proxy.lines
    health, lines = asyncio.run(go())
    assert health["replicas_up"] == 1
    assert lines and all(line.startswith(f"GET http://{NAME}:") for line in lines)
