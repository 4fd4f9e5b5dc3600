"""The relay loop: admit, stream backend chunks to a sink, settle limits, record usage.

It is transport-agnostic: SSE, plain JSON and WebSocket handlers pass an ``emit``
coroutine that writes one chunk and waits until it is flushed (backpressure).
Cancelling the task that runs ``generate`` (client disconnect) closes the backend's
iterator at once, which stops the generation / closes the upstream connection.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from gateway import metrics
from gateway.errors import APIError
from gateway.types import Admission, Chunk, GenerationRequest, Principal, Usage

log = logging.getLogger("allyoucantoken.relay")

Emit = Callable[[Chunk], Awaitable[None]]


class ClientGone(Exception):
    """The client went away while we were writing to it."""


def estimate_prompt_tokens(req: GenerationRequest) -> int:
    """A cheap prompt-size estimate (about four characters a token); no text is kept."""
    if req.kind == "chat":
        chars = 0
        for m in req.messages:
            content = m.get("content") or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            chars += len(content) + 8
    else:
        chars = len(req.prompt)
    return max(1, chars // 4)


async def admit(gateway, principal: Principal, req: GenerationRequest) -> list[Admission]:
    """Ask every limiter; when one denies, release what the others reserved and raise."""
    granted: list[tuple[object, Admission]] = []
    for limiter in gateway.limiters:
        try:
            adm = await limiter.admit(principal, req)
        except BaseException:
            await _settle(granted, Usage(), "denied")
            raise
        if not adm.allowed:
            await _settle(granted, Usage(), "denied")
            metrics.LIMIT_REJECTIONS.labels(adm.limit or limiter.name).inc()
            headers = dict(adm.headers)
            if adm.status == 429:
                headers["Retry-After"] = str(max(1, int(adm.retry_after + 0.999)))
            raise APIError(adm.status, adm.message or f"Limit reached: {adm.limit}",
                           code=adm.limit or None, param=adm.reservation.get("param"),
                           headers=headers)
        if adm.max_tokens is not None:
            req.max_tokens = adm.max_tokens
        granted.append((limiter, adm))
    return [adm for _, adm in granted] if granted else []


async def _settle(granted, usage: Usage, outcome: str) -> None:
    for limiter, adm in granted:
        try:
            await limiter.settle(adm, usage, outcome)
        except Exception:  # noqa: BLE001 - a failing settle must not hide the response
            log.exception("limiter %s failed to settle", getattr(limiter, "name", limiter))


class Generation:
    """One request's trip through a backend, with its accounting."""

    def __init__(self, gateway, principal: Principal, req: GenerationRequest,
                 transport: str, started: float) -> None:
        self.gateway = gateway
        self.principal = principal
        self.req = req
        self.transport = transport
        self.started = started
        self.admissions: list[tuple[object, Admission]] = []
        self.headers: dict[str, str] = {}
        self.usage = Usage()
        self.finish_reason: str | None = None

    async def admit(self) -> None:
        """Run the limiters (raises APIError on denial); collect rate-limit headers."""
        adms = await admit(self.gateway, self.principal, self.req)
        self.admissions = list(zip(self.gateway.limiters, adms))
        for adm in adms:
            self.headers.update(adm.headers)

    async def run(self, emit: Emit) -> Usage:
        """Stream the backend to ``emit``; always settle and record, however it ends."""
        backend = self.gateway.backend_for(self.req.model)
        model = self.req.model
        metrics.OVERHEAD.observe(time.perf_counter() - self.started)
        metrics.ACTIVE_STREAMS.labels(self.transport).inc()
        status, error_code, outcome = 200, None, "ok"
        self._relayed, self._ttft, self._reported = 0, None, None
        task = asyncio.current_task()
        self.gateway.running.add(task)
        try:
            stream = backend.chat(self.req) if self.req.kind == "chat" else \
                backend.completions(self.req)
            try:
                async with asyncio.timeout(self.gateway.config.server.request_timeout):
                    await self._pump(stream, emit)
            finally:
                await stream.aclose()
        except (asyncio.CancelledError, ClientGone):
            status, error_code, outcome = 499, "client_disconnected", "cancelled"
            raise
        except TimeoutError:
            status, error_code, outcome = 504, "timeout", "timeout"
            raise APIError(504, "The request timed out while generating.", code="timeout") from None
        except APIError as exc:
            status, error_code, outcome = exc.status, exc.code or "backend_error", "error"
            metrics.BACKEND_ERRORS.labels(model, str(exc.status)).inc()
            raise
        except Exception as exc:
            status, error_code, outcome = 502, "backend_error", "error"
            metrics.BACKEND_ERRORS.labels(model, "502").inc()
            log.error("backend %s failed: %s", model, type(exc).__name__)
            raise APIError(502, "The model backend failed while generating.",
                           code="backend_error") from None
        finally:
            metrics.ACTIVE_STREAMS.labels(self.transport).dec()
            relayed, ttft, usage = self._relayed, self._ttft, self._reported
            if usage is None or usage.completion_tokens < relayed:
                prompt = usage.prompt_tokens if usage and usage.prompt_tokens else \
                    estimate_prompt_tokens(self.req)
                usage = Usage(prompt, relayed, estimated=True)
            self.usage = usage
            if self.finish_reason is None and status == 200:
                self.finish_reason = "stop"
            try:
                await asyncio.shield(self._finish(usage, outcome, status, error_code, ttft))
            finally:
                self.gateway.running.discard(task)
        return self.usage

    async def _pump(self, stream, emit: Emit) -> None:
        async for chunk in stream:
            if chunk.usage is not None:
                self._reported = chunk.usage
            if chunk.finish_reason:
                self.finish_reason = chunk.finish_reason
            if not chunk.text and not chunk.finish_reason:
                continue
            if chunk.text:
                self._relayed += 1
                if self._ttft is None:
                    self._ttft = time.perf_counter() - self.started
                    metrics.TTFT.labels(self.req.model).observe(self._ttft)
            await emit(chunk)

    async def _finish(self, usage: Usage, outcome: str, status: int,
                      error_code: str | None, ttft: float | None) -> None:
        await _settle(self.admissions, usage, outcome)
        metrics.TOKENS.labels(self.req.model, "in").inc(usage.prompt_tokens)
        metrics.TOKENS.labels(self.req.model, "out").inc(usage.completion_tokens)
        self.record(status, error_code, ttft)

    def record(self, status: int, error_code: str | None, ttft: float | None = None) -> None:
        """Queue the usage event for this request (metadata only)."""
        self.gateway.usage.record({
            "request_id": self.req.request_id, "account_id": self.principal.account_id,
            "key_id": self.principal.key_id, "model": self.req.model, "kind": self.req.kind,
            "transport": self.transport, "status": status, "error_code": error_code,
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "estimated": self.usage.estimated,
            "ttft_ms": round(ttft * 1000, 3) if ttft is not None else None,
            "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
        })
