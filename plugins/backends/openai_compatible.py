"""Built-in backend: any OpenAI-compatible upstream (mlc_llm serve, vLLM, SGLang,
llama.cpp server), over pooled keep-alive HTTP connections (aiohttp).

Model options (``[[models]] options``):
  base_url / base_urls   upstream root(s) ending in /v1; several = replicas (least busy first)
  upstream_model         model name at the upstream (default: the gateway model name)
  api_key                bearer token for the upstream, if it wants one
  connect_timeout        seconds (default 5)
  read_timeout           seconds between chunks (default 120)
  max_connections        pooled connections per replica (default 256)
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import aiohttp

from gateway.errors import APIError
from gateway.hookspecs import hookimpl
from gateway.types import Chunk, GenerationRequest
from plugins.backends.sse import UpstreamError, parse_line

HEALTH_TTL = 5.0


class Replica:
    """One upstream server: its URL, in-flight count and last known health."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.in_flight = 0
        self.healthy = True
        self.checked = 0.0


class OpenAICompatibleBackend:
    """Streams from an OpenAI-compatible HTTP upstream; always asks it for usage."""

    def __init__(self, model_cfg, config) -> None:
        opts = model_cfg.options
        self.name = model_cfg.name
        urls = opts.get("base_urls") or [opts.get("base_url", "http://127.0.0.1:8000/v1")]
        self.replicas = [Replica(u) for u in urls]
        self.upstream_model = opts.get("upstream_model", model_cfg.name)
        self.api_key = opts.get("api_key", "")
        self.timeout = aiohttp.ClientTimeout(total=None,
                                             sock_connect=float(opts.get("connect_timeout", 5)),
                                             sock_read=float(opts.get("read_timeout", 120)))
        self.max_connections = int(opts.get("max_connections", 256))
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.max_connections * len(self.replicas),
                                         limit_per_host=self.max_connections,
                                         keepalive_timeout=60)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.session = aiohttp.ClientSession(connector=connector, timeout=self.timeout,
                                             headers=headers, auto_decompress=False)

    async def close(self) -> None:
        if self.session:
            await self.session.close()

    async def health(self) -> dict:
        await asyncio.gather(*(self._check(r) for r in self.replicas))
        return {"ok": any(r.healthy for r in self.replicas),
                "replicas": {r.url: r.healthy for r in self.replicas}}

    async def _check(self, replica: Replica, force: bool = False) -> None:
        if not force and time.monotonic() - replica.checked < HEALTH_TTL:
            return
        try:
            async with self.session.get(f"{replica.url}/models",
                                        timeout=aiohttp.ClientTimeout(total=2)) as resp:
                replica.healthy = resp.status < 500
        except (aiohttp.ClientError, TimeoutError):
            replica.healthy = False
        replica.checked = time.monotonic()

    def _pick(self) -> Replica:
        candidates = [r for r in self.replicas if r.healthy] or self.replicas
        return min(candidates, key=lambda r: r.in_flight)

    def chat(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream(req, "chat/completions", "chat")

    def completions(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream(req, "completions", "completion")

    def _payload(self, req: GenerationRequest) -> dict:
        body = dict(req.body)
        body["model"] = self.upstream_model
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        body.pop("max_completion_tokens", None)
        if req.max_tokens is not None:
            body["max_tokens"] = req.max_tokens
        return body

    async def _stream(self, req: GenerationRequest, path: str, kind: str):
        replica = self._pick()
        replica.in_flight += 1
        resp = None
        try:
            try:
                resp = await self.session.post(f"{replica.url}/{path}", json=self._payload(req))
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                replica.healthy, replica.checked = False, time.monotonic()
                raise APIError(503, f"The model `{self.name}` is unavailable right now; "
                                    "try again shortly.", code="backend_unavailable") from exc
            if resp.status != 200:
                raise await self._upstream_error(resp)
            try:
                async for line in resp.content:
                    chunk = parse_line(line, kind)
                    if chunk is False:
                        break
                    if chunk is not None:
                        yield chunk
            except UpstreamError as exc:
                raise APIError(502, "The model backend reported an error while generating.",
                               code="backend_error") from exc
            except TimeoutError as exc:
                raise APIError(504, "The model backend stopped responding.",
                               code="backend_timeout") from exc
            except aiohttp.ClientPayloadError as exc:
                raise APIError(502, "The model backend closed the stream early.",
                               code="backend_error") from exc
            resp.release()   # finished normally: keep the connection for reuse
            resp = None
        finally:
            replica.in_flight -= 1
            if resp is not None:
                resp.close()  # stopped early: close the connection so the upstream stops

    async def _upstream_error(self, resp) -> APIError:
        try:
            body = await resp.json(content_type=None)
            message = (body.get("error") or {}).get("message") or str(body)[:300]
        except Exception:  # noqa: BLE001
            message = f"upstream status {resp.status}"
        if 400 <= resp.status < 500 and resp.status not in (401, 403, 429):
            return APIError(400 if resp.status != 404 else 404, message, code="upstream_rejected")
        if resp.status == 429 or resp.status == 503:
            return APIError(503, f"The model `{self.name}` is overloaded; try again shortly.",
                            code="backend_unavailable", headers={"Retry-After": "1"})
        return APIError(502, f"The model backend failed (status {resp.status}).",
                        code="backend_error")


@hookimpl
def register_backends(register, config):
    """Register the ``openai_compatible`` backend type."""
    register("openai_compatible", OpenAICompatibleBackend)
