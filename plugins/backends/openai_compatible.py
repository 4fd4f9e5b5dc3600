"""Built-in backend: any OpenAI-compatible upstream (mlc_llm serve, vLLM, SGLang,
llama.cpp server), over pooled keep-alive HTTP/1.1 connections (a lean client of our
own, ``plugins.backends.upstream_http``: one pool per replica).

Several replicas may serve one model. Each request goes to the least busy healthy
replica (ties rotate). A background loop probes every replica's ``/models``; a replica
that fails a probe or refuses a connection is taken out until a probe succeeds again.
A request is retried on another replica only while nothing has been sent to the client
(before the first token); once a token is out, an upstream failure ends the stream
with an error.

Model options (``[[models]] options``):
  base_url / base_urls   upstream root(s) ending in /v1; several = replicas
  upstream_model         model name at the upstream (default: the gateway model name)
  api_key                bearer token for the upstream, if it wants one
  connect_timeout        seconds to open a TCP connection (default 5)
  read_timeout           seconds to wait for response headers or the next chunk (default 120)
  max_connections        upstream connections (= streams) per replica (default 4096)
  pool_timeout           seconds a request may wait for a free connection slot when all
                         ``max_connections`` are busy; then 503 ``backend_busy`` (default 10)
  keepalive_timeout      seconds an idle pooled connection is kept (default 4: shorter
                         than the upstream's own keep-alive timeout, 5 s for uvicorn)
  health_interval        seconds between health probes of each replica (default 5)
  health_timeout         seconds a probe may take (default 2)
  max_attempts           replicas tried for one request before giving up (default: all)
  embeddings             true: the upstream serves /embeddings too (default false)
  ca_file                PEM file of the CA certificate(s) to trust for ``https://``
                         upstreams instead of the system's (a private CA, or a self-signed
                         upstream certificate); certificates and host names are always
                         verified (default: the system's CAs)
  proxy                  "env" (default): ``HTTPS_PROXY`` / ``HTTP_PROXY`` by the URL's
                         scheme, unless ``NO_PROXY`` names the host; loopback upstreams
                         never go through it. "": never a proxy. ``http://[user:pass@]
                         host:port``: that proxy for every replica. https upstreams go
                         through a CONNECT tunnel (TLS end to end), http ones as
                         absolute-form requests. See ``upstream_http`` for what the
                         client does not do (HTTP/2, redirects, compression, SOCKS...)

Requests are relayed faithfully: the body goes upstream with only ``model``,
``stream`` and ``stream_options.include_usage`` set (fields the gateway does not know
follow the model's ``unknown_params`` policy), and each upstream event comes back as
Chunks carrying its original bytes (see ``plugins.backends.sse``). Health probes use a
pool and connections of their own (two per replica), so they never wait behind traffic.

Errors the client gets: 503 ``backend_unavailable`` (no replica reachable, or all
overloaded), 503 ``backend_busy`` (no connection slot free within ``pool_timeout``), 502 ``backend_error`` (upstream failed or cut the stream), 504
``backend_timeout`` (upstream stopped responding), 4xx ``upstream_rejected`` (the
upstream refused the request itself; never retried).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from dataclasses import field
from typing import AsyncIterator

from gateway import sdk
from gateway.sdk import APIError, Chunk, GenerationRequest, Usage, hookimpl, metrics, stop_task
from plugins.backends.sse import EventShape, UpstreamError, parse_line
from plugins.backends.upstream_http import ConnectTimeout, ConnectionClosed, Pool, PoolTimeout

log = logging.getLogger("allyoucantoken.backend.openai")

# json.dumps(..., separators=(",", ":")) with one encoder made once (json.dumps builds a
# new one per call when given options)
_compact = json.JSONEncoder(separators=(",", ":")).encode


class Replica:
    """One upstream server: its URL, in-flight count and last known health."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.in_flight = 0
        self.healthy = True
        self.checked = 0.0
        self.pool: Pool | None = None          # set by the backend's start()
        self.health_pool: Pool | None = None   # the probes' own connections


class OpenAICompatibleBackend(sdk.Backend):
    """Streams from OpenAI-compatible HTTP upstreams; always asks them for usage."""

    unknown_params = "pass"   # default policy for request fields the gateway does not know
    max_n = 128               # several choices: the upstream makes them

    class Options(sdk.Options):
        """``[models.options]`` of an openai_compatible model (see the README)."""

        base_url: str = "http://127.0.0.1:8000/v1"
        base_urls: list[str] = field(default_factory=list)   # replicas (wins over base_url)
        upstream_model: str = ""          # the name the upstream expects (default: ours)
        api_key: str = ""
        connect_timeout: float = 5.0
        read_timeout: float = 120.0
        max_connections: int = 4096
        pool_timeout: float = 10.0
        # below uvicorn's 5 s default (mlc_llm serve, vLLM, llama_cpp.server), so we
        # drop an idle connection before the upstream does
        keepalive_timeout: float = 4.0
        health_interval: float = 5.0
        health_timeout: float = 2.0
        max_attempts: int = 0             # replicas tried per request (0: all of them)
        embeddings: bool = False
        ca_file: str = ""                 # CAs to trust for https upstreams (PEM)
        proxy: str = "env"                # "env", "" (none) or an http:// proxy URL

    def __init__(self, model_cfg, config) -> None:
        self._configure(model_cfg.name, self.Options.parse(model_cfg.options,
                                                           f"models.{model_cfg.name}.options"))

    def _configure(self, name: str, opts: "OpenAICompatibleBackend.Options") -> None:
        """Take the relay's settings from ``opts`` (local model workers make their own)."""
        self.options = opts
        self.name = name
        self.replicas = [Replica(u) for u in (opts.base_urls or [opts.base_url])]
        self.upstream_model = opts.upstream_model or name
        self.api_key = opts.api_key
        self.connect_timeout = opts.connect_timeout
        self.read_timeout = opts.read_timeout
        self.max_connections = opts.max_connections
        self.pool_timeout = opts.pool_timeout
        self.keepalive_timeout = opts.keepalive_timeout
        self.health_interval = max(0.05, opts.health_interval)
        self.health_timeout = opts.health_timeout
        self.max_attempts = opts.max_attempts or len(self.replicas)
        self._health_task: asyncio.Task | None = None
        self._turn = itertools.count()
        self.capabilities = ["chat", "completions"] + (["embeddings"] if opts.embeddings else [])

    # -- life cycle ---------------------------------------------------------
    async def start(self) -> None:
        """Open the connection pool, probe every replica once, start the health loop."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        opts = self.options
        ssl_context = (ssl.create_default_context(cafile=opts.ca_file) if opts.ca_file
                       else None)
        tls = {"ssl_context": ssl_context, "proxy": opts.proxy}
        for replica in self.replicas:
            # The pool bounds the streams per replica (max_connections); a request that
            # finds no slot within pool_timeout gets 503 backend_busy.
            replica.pool = Pool(replica.url, limit=self.max_connections,
                                connect_timeout=self.connect_timeout,
                                read_timeout=self.read_timeout,
                                keepalive_timeout=self.keepalive_timeout, headers=headers,
                                **tls)
            replica.health_pool = Pool(replica.url, limit=2,
                                       connect_timeout=min(self.connect_timeout,
                                                           self.health_timeout),
                                       read_timeout=self.health_timeout,
                                       keepalive_timeout=self.keepalive_timeout,
                                       headers=headers, **tls)
        await self._check_all()
        self._health_task = asyncio.create_task(self._health_loop())

    async def close(self) -> None:
        """Stop the health loop and close every pooled connection."""
        await stop_task(self._health_task)
        for replica in self.replicas:
            for pool in (replica.pool, replica.health_pool):
                if pool is not None:
                    await pool.close()

    # -- health ---------------------------------------------------------------
    async def health(self) -> dict:
        """Last known health (kept fresh by the loop): ok when any replica is up."""
        up = sum(r.healthy for r in self.replicas)
        return {"ok": up > 0, "replicas_up": up, "replicas": len(self.replicas)}

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval)
            try:
                await self._check_all()
            except Exception:
                log.exception("health check of %s failed", self.name)

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _check(self, replica: Replica) -> None:
        ok, conn = False, None
        try:
            async with asyncio.timeout(self.health_timeout):
                conn = await replica.health_pool.request("GET", "/models")
                ok = conn.status < 500
                await conn.read_all(1 << 20)   # read to the end: the connection is reused
            conn.release()
            conn = None
        except (TimeoutError, OSError, PoolTimeout):
            pass
        finally:
            if conn is not None:
                conn.close()
        self._set_health(replica, ok)

    def _set_health(self, replica: Replica, ok: bool) -> None:
        if ok != replica.healthy:
            log.warning("model %s: replica %s is %s", self.name, replica.url,
                        "back up" if ok else "down")
        replica.healthy = ok
        replica.checked = time.monotonic()
        metrics.REPLICA_UP.labels(self.name, replica.url).set(1 if ok else 0)

    def _failed(self, replica: Replica, reason: str) -> None:
        log.warning("model %s: replica %s failed (%s)", self.name, replica.url, reason)
        self._set_health(replica, False)

    def _tries(self):
        """The replicas one request may try, in order of choice (at most max_attempts)."""
        tried: set[Replica] = set()
        while len(tried) < self.max_attempts:
            replica = self._pick(tried)
            if replica is None:
                return
            tried.add(replica)
            yield replica

    def _pick(self, exclude, hint: int | None = None) -> Replica | None:
        """The replica ``hint`` (where the fair queue gave the request its slot), else
        the least busy healthy replica not yet tried (ties rotate); if none is healthy,
        the least busy untried one anyway (health may be stale)."""
        replicas = self.replicas
        if hint is not None and hint < len(replicas) and replicas[hint] not in exclude:
            return replicas[hint]
        if len(replicas) == 1:              # one replica: the choice is made
            return None if exclude else replicas[0]
        left = [r for r in replicas if r not in exclude]
        if not left:
            return None
        candidates = [r for r in left if r.healthy] or left
        least = min(r.in_flight for r in candidates)
        ties = [r for r in candidates if r.in_flight == least]
        return ties[next(self._turn) % len(ties)]

    # -- generation -----------------------------------------------------------
    def chat(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream(req, "/chat/completions", "chat")

    def completions(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream(req, "/completions", "completion")

    def _payload(self, req: GenerationRequest) -> dict:
        body = dict(req.body)
        body["model"] = self.upstream_model
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        body.pop("max_completion_tokens", None)
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        return body

    async def _stream(self, req: GenerationRequest, path: str, kind: str):
        """Stream from the least busy replica; a failure before the first chunk is tried
        again on another one (up to ``max_attempts``), after it ends the stream."""
        payload = _compact(self._payload(req)).encode()
        error: APIError | None = None
        tried: tuple[Replica, ...] = ()
        sent = False
        while len(tried) < self.max_attempts:
            # the replica the fair queue gave the request a slot on, first
            replica = self._pick(tried, None if tried else req.replica)
            if replica is None:
                break
            tried += (replica,)
            if error is not None:
                metrics.BACKEND_RETRIES.labels(self.name, error.code or "error").inc()
            replica.in_flight += 1
            resp = None
            try:
                try:
                    resp = await replica.pool.request("POST", path, payload,
                                                      pool_timeout=self.pool_timeout)
                except PoolTimeout:
                    error = self._busy()
                    continue
                except ConnectTimeout:
                    self._failed(replica, "connect timeout")
                    error = self._unavailable()
                    continue
                except TimeoutError:
                    log.warning("model %s: replica %s sent no response headers in time",
                                self.name, replica.url)
                    error = self._timeout()
                    continue
                except OSError as exc:
                    self._failed(replica, type(exc).__name__)
                    error = self._unavailable()
                    continue
                if resp.status != 200:
                    error = await self._upstream_error(resp)
                    resp = None   # released by _upstream_error
                    if error.status >= 500:
                        continue
                    raise error
                finished = False
                try:
                    # Whatever arrived is taken at once and split into lines (C speed):
                    # one await per read from the socket, not one per line.
                    rest, read, wait = b"", resp.read_nowait, resp.wait
                    shape = EventShape(kind)    # its usual event is not decoded
                    while True:
                        data = read()
                        if data is None:
                            await wait()
                            continue
                        if data:
                            lines = (rest + data if rest else data).split(b"\n")
                            rest = lines.pop()
                        elif rest:                      # the end, after a line without \n
                            lines, rest = [rest], b""
                        else:
                            break
                        for line in lines:
                            if not line:                # the blank line after an event
                                continue
                            # Until the first chunk is out, its event's shape is
                            # learnt after it is yielded, not on the way to the client.
                            chunks = parse_line(line, kind, shape if sent else None)
                            if chunks is None:
                                continue
                            if chunks is False:
                                finished = True
                                break
                            learn = not sent and len(chunks) == 1
                            for chunk in chunks:
                                if chunk.finish_reason:
                                    finished = True
                                if not sent:
                                    sent = True
                                    payload = None   # no retry from here on
                                yield chunk
                            if learn and chunks[0].raw is not None:
                                shape.learn(chunks[0].raw, chunks[0])
                        else:
                            # nothing of this read is kept while waiting for the next
                            data = lines = chunks = chunk = None
                            continue
                        break                           # data: [DONE]
                    if not finished:
                        raise ConnectionClosed("stream ended without [DONE]")
                except UpstreamError:
                    error = APIError(502, "The model backend reported an error while "
                                          "generating.", code="backend_error")
                    if sent:
                        raise error from None
                    continue
                except TimeoutError:
                    error = self._timeout()
                    if sent:
                        raise error from None
                    continue
                except OSError:   # closed early, or not valid HTTP (ConnectionError)
                    error = self._closed_early()
                    if sent:
                        raise error from None
                    self._set_health(replica, False)
                    continue
                resp.release()   # finished normally: keep the connection for reuse
                resp = None
                return
            finally:
                replica.in_flight -= 1
                if resp is not None:
                    resp.close()  # stopped early: close the connection so the upstream stops
        if error is not None:   # the last attempt's failure (earlier ones: above)
            metrics.BACKEND_RETRIES.labels(self.name, error.code or "error").inc()
        raise error or self._unavailable()

    def _busy(self) -> APIError:
        return APIError(503, f"The model `{self.name}` is at its connection limit "
                             f"({self.max_connections} streams per replica); no slot was "
                             f"free within {self.pool_timeout:g}s. Try again shortly.",
                        code="backend_busy", headers={"Retry-After": "1"})

    # -- embeddings (only with the ``embeddings`` option) -----------------------
    async def embeddings(self, req: GenerationRequest):
        """POST ``/embeddings`` to the least busy replica (another one when it cannot be
        reached or fails with 5xx); always asks for floats. Returns (vectors, Usage or
        None when the upstream reports none)."""
        payload = json.dumps({**req.body, "model": self.upstream_model,
                              "encoding_format": "float"}, separators=(",", ":")).encode()
        error = self._unavailable()
        for replica in self._tries():
            replica.in_flight += 1
            resp = None
            try:
                resp = await replica.pool.request("POST", "/embeddings", payload,
                                                  pool_timeout=self.pool_timeout)
                if resp.status != 200:
                    error = await self._upstream_error(resp)
                    resp = None   # released by _upstream_error
                    if error.status >= 500:
                        continue
                    raise error
                raw = await resp.read_all()
                resp.release()
                resp = None
            except PoolTimeout:
                continue
            except TimeoutError:
                error = self._timeout()
                continue
            except OSError as exc:
                self._failed(replica, type(exc).__name__)
                continue
            finally:
                replica.in_flight -= 1
                if resp is not None:
                    resp.close()
            try:
                body = json.loads(raw)
                data = sorted(body["data"], key=lambda d: d["index"])
                vectors = [d["embedding"] for d in data]
            except (KeyError, TypeError, ValueError):
                raise APIError(502, "The model backend sent an unreadable embeddings "
                                    "response.", code="backend_error") from None
            usage = body.get("usage") or {}
            tokens = usage.get("prompt_tokens")
            return vectors, (Usage(int(tokens), 0) if isinstance(tokens, int) else None)
        raise error

    def _closed_early(self) -> APIError:
        return APIError(502, "The model backend closed the stream early.",
                        code="backend_error")

    def _unavailable(self) -> APIError:
        return APIError(503, f"The model `{self.name}` is unavailable right now; "
                             "try again shortly.", code="backend_unavailable",
                        headers={"Retry-After": "1"})

    def _timeout(self) -> APIError:
        return APIError(504, "The model backend stopped responding.", code="backend_timeout")

    async def _upstream_error(self, resp) -> APIError:
        """The client's error for an upstream's non-200 answer (reads and releases it)."""
        try:
            body = json.loads(await resp.read_all(1 << 20))
            message = (body.get("error") or {}).get("message") or str(body)[:300]
        except Exception:  # noqa: BLE001
            message = f"upstream status {resp.status}"
        finally:
            resp.release()
        if 400 <= resp.status < 500 and resp.status not in (401, 403, 408, 429):
            return APIError(404 if resp.status == 404 else 400, str(message)[:500],
                            code="upstream_rejected")
        if resp.status in (429, 503):
            return APIError(503, f"The model `{self.name}` is overloaded; try again shortly.",
                            code="backend_unavailable", headers={"Retry-After": "1"})
        if resp.status == 504 or resp.status == 408:
            return self._timeout()
        return APIError(502, f"The model backend failed (status {resp.status}).",
                        code="backend_error")


@hookimpl
def register_backends(register, config):
    """Register the ``openai_compatible`` backend type."""
    register("openai_compatible", OpenAICompatibleBackend)
