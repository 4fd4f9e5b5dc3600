"""The relay loop: admit, stream backend chunks to a sink, settle limits, record usage.

It is transport-agnostic: SSE, plain JSON and WebSocket handlers pass an ``emit``
coroutine that writes one chunk and waits until it is flushed (backpressure).
Cancelling the task that runs ``generate`` (client disconnect) closes the backend's
iterator at once, which stops the generation / closes the upstream connection.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable

from gateway.obs import metrics
from gateway.errors import APIError
from gateway.types import Admission, Chunk, GenerationRequest, Principal, Usage

log = logging.getLogger("allyoucantoken.relay")

Emit = Callable[[Chunk], Awaitable[None]]

_children: dict[tuple, object] = {}


def _child(metric, *labels):
    """``metric.labels(*labels)``, looked up once (labels() validates and locks on every
    call; the relay uses a few per request)."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def _shielded(coro) -> Awaitable:
    """``asyncio.shield(coro)`` with the coroutine started eagerly: when it completes
    without suspending (limiters that settle synchronously, the usual case), the done
    task is awaited as is: no event-loop pass, no outer future. A coroutine that does
    suspend is shielded as before (a cancellation never interrupts it)."""
    task = asyncio.Task(coro, loop=asyncio.get_running_loop(), eager_start=True)
    return task if task.done() else asyncio.shield(task)


class ClientGone(Exception):
    """The client went away while we were writing to it."""


def estimate_prompt_tokens(req: GenerationRequest) -> int:
    """A cheap prompt-size estimate (about four characters a token, tool definitions and
    earlier tool calls included); no text is kept."""
    if req.kind == "chat":
        chars = 0
        for m in req.messages:
            content = m.get("content") or ""
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            chars += len(content) + 8
            if m.get("tool_calls"):   # an assistant's earlier calls: names and arguments
                chars += output_chars("", {"tool_calls": m["tool_calls"]})
        if req.body.get("tools"):
            chars += len(json.dumps(req.body["tools"]))
    else:
        chars = len(req.prompt)
    return max(1, chars // 4)


def output_chars(text: str, delta: dict) -> int:
    """Characters of generated output in a chat delta: content, reasoning, refusal and
    tool calls (name and arguments)."""
    n = len(delta.get("content") or text or "")
    for key in ("reasoning_content", "refusal", "reasoning"):
        value = delta.get(key)
        if value and isinstance(value, str):
            n += len(value)
    calls = delta.get("tool_calls")
    if calls and isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                n += len(fn.get("name") or "") + len(fn.get("arguments") or "")
    return n


class Accumulator:
    """Builds a non-streaming response's choices from Chunks, as the OpenAI SDK
    accumulates a stream: strings are concatenated, tool calls merged by index,
    logprobs lists extended; unknown delta fields kept (strings joined)."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.choices: dict[int, dict] = {}
        self.extra: dict = {}

    def add(self, chunk: Chunk) -> None:
        if chunk.extra:
            self.extra.update(chunk.extra)
        c = self.choices.get(chunk.index)
        if c is None:
            c = self.choices[chunk.index] = {"parts": [], "fields": {}, "calls": {},
                                             "logprobs": None, "finish_reason": None}
        if chunk.finish_reason:
            c["finish_reason"] = chunk.finish_reason
            if chunk.stop is not None:
                c["stop_reason"] = chunk.stop
        if chunk.logprobs:
            lp = c["logprobs"]
            if lp is None:
                c["logprobs"] = {k: list(v) if isinstance(v, list) else v
                                 for k, v in chunk.logprobs.items()}
            else:
                for k, v in chunk.logprobs.items():
                    if isinstance(v, list) and isinstance(lp.get(k), list):
                        lp[k].extend(v)
                    elif v is not None:
                        lp[k] = v
        delta = chunk.delta
        if delta is None:
            if chunk.text:
                c["parts"].append(chunk.text)
            return
        for key, value in delta.items():
            if key == "content":
                if value:
                    c["parts"].append(value)
            elif key == "tool_calls":
                for call in value or ():
                    self._merge_call(c["calls"], call)
            elif key == "role" or value is None:
                continue
            elif isinstance(value, str) and isinstance(c["fields"].get(key), str):
                c["fields"][key] += value
            else:
                c["fields"][key] = value

    @staticmethod
    def _merge_call(calls: dict, delta: dict) -> None:
        if not isinstance(delta, dict):
            return
        call = calls.setdefault(delta.get("index", len(calls)),
                                {"id": None, "type": "function",
                                 "function": {"name": "", "arguments": ""}})
        for key, value in delta.items():
            if key == "index" or value is None:
                continue
            if key == "function" and isinstance(value, dict):
                for fk, fv in value.items():
                    if isinstance(fv, str):
                        call["function"][fk] = call["function"].get(fk, "") + fv
                    elif fv is not None:
                        call["function"][fk] = fv
            else:
                call[key] = value

    def result(self, default_finish: str | None) -> list[dict]:
        """The ``choices`` of the response, in index order."""
        out = []
        for index in sorted(self.choices) or [0]:
            c = self.choices.get(index) or {"parts": [], "fields": {}, "calls": {},
                                            "logprobs": None, "finish_reason": None}
            text = "".join(c["parts"])
            choice: dict = {"index": index}
            if self.chat:
                message = {"role": "assistant", "content": text, "refusal": None,
                           **c["fields"]}
                if c["calls"]:
                    message["tool_calls"] = [c["calls"][k] for k in sorted(c["calls"])]
                    if not text:
                        message["content"] = None
                choice["message"] = message
            else:
                choice["text"] = text
            choice["logprobs"] = c["logprobs"]
            choice["finish_reason"] = c["finish_reason"] or default_finish
            if "stop_reason" in c:       # the stop sequence that ended it, as vLLM says
                choice["stop_reason"] = c["stop_reason"]
            out.append(choice)
        return out


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
                           code=adm.limit or None, param=adm.param,
                           headers=headers)
        if adm.max_tokens is not None:
            req.max_tokens = adm.max_tokens
        granted.append((limiter, adm))
    return [adm for _, adm in granted] if granted else []


async def _settle(granted, usage: Usage, outcome: str) -> None:
    for limiter, adm in granted:
        try:
            await limiter.settle(adm, usage, outcome)
        except Exception:
            log.exception("limiter %s failed to settle", getattr(limiter, "name", limiter))


class _Observations:
    """A generation's overhead and time-to-first-token histogram observations, taken
    when :meth:`flush` is called (after the first chunk is written, or at the end) rather
    than when measured. Each is observed once."""

    __slots__ = ("model", "overhead", "ttft", "pending")

    def __init__(self, model: str, overhead: float) -> None:
        self.model = model
        self.overhead: float | None = overhead
        self.ttft: float | None = None
        self.pending = True

    def flush(self) -> None:
        if self.overhead is not None:
            metrics.OVERHEAD.observe(self.overhead)
            self.overhead = None
        if self.ttft is not None:
            _child(metrics.TTFT, self.model).observe(self.ttft)
            self.ttft = None
            self.pending = False


class _Running:
    """What :attr:`Gateway.running` holds for a generation in progress: ``cancel()``
    cancels the task that runs it (a handler's own task: no task of its own per request),
    and awaiting it waits until the generation has settled and recorded its usage."""

    __slots__ = ("task", "_settled")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self._settled: asyncio.Future | None = None   # made only when someone waits

    def cancel(self, msg=None) -> bool:
        return self.task.cancel(msg)

    def done(self) -> bool:
        return self.task is None

    def settle(self) -> None:
        self.task = None
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def __await__(self):
        if self.task is not None:
            if self._settled is None:
                self._settled = asyncio.get_running_loop().create_future()
            yield from self._settled.__await__()


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
        self.stop_sequence: str | None = None   # the stop sequence that ended it, if said
        self.usage_raw: bytes | None = None   # the upstream's own usage event, if any
        # Called with the queue position while the request waits for the model's
        # capacity, every queue.keepalive seconds (SSE comment, WebSocket message).
        self.on_queued = None
        self.queue_wait: float | None = None  # seconds waited for a slot, if it queued

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
        # Histograms are observed once the first chunk is out (or at the end, if none
        # is): their bookkeeping is not on the way to the upstream or the first token.
        observe = _Observations(self.req.model, time.perf_counter() - self.started)
        _child(metrics.ACTIVE_STREAMS, self.transport).inc()
        status, error_code, outcome = 200, None, "ok"
        self._relayed, self._chars, self._ttft, self._reported = 0, 0, None, None
        running = _Running(asyncio.current_task())
        self.gateway.running.add(running)
        queue = self.gateway.dispatcher.queues.get(model)
        ticket = None
        try:
            if queue is not None:
                ticket = await self.gateway.dispatcher.turn(queue, self.req, self.principal,
                                                           self.on_queued)
                self.req.replica = ticket.replica
                if ticket.future is not None:          # it had to wait
                    self.queue_wait = ticket.waited
            stream = backend.chat(self.req) if self.req.kind == "chat" else \
                backend.completions(self.req)
            try:
                async with asyncio.timeout(self.gateway.config.server.request_timeout):
                    # the pump, inline (no coroutine frame of its own per open stream)
                    async for chunk in stream:
                        delta = chunk.delta
                        if chunk.usage is not None:
                            self._reported = chunk.usage
                            if delta is None and not chunk.text and not chunk.finish_reason:
                                self.usage_raw = chunk.raw   # usage-only: sent at the end
                                continue
                        if chunk.finish_reason:
                            self.finish_reason = chunk.finish_reason
                            self.stop_sequence = chunk.stop
                        if not delta:
                            chars = len(chunk.text)
                        elif len(delta) == 1 and "content" in delta:     # the usual delta
                            chars = len(delta["content"] or chunk.text or "")
                        else:
                            chars = output_chars(chunk.text, delta)
                        if chars:
                            self._relayed += 1
                            self._chars += chars
                            if self._ttft is None:
                                self._ttft = observe.ttft = time.perf_counter() - self.started
                        elif delta is None and not chunk.finish_reason and \
                                chunk.logprobs is None:
                            continue
                        await emit(chunk)
                        if observe.pending:
                            observe.flush()
                        chunk = delta = None   # not kept (nor its parsed event) while waiting
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
        except Exception as exc:  # noqa: BLE001 - any backend failure is a 502 to the client
            status, error_code, outcome = 502, "backend_error", "error"
            metrics.BACKEND_ERRORS.labels(model, "502").inc()
            log.error("backend %s failed: %s", model, type(exc).__name__)
            raise APIError(502, "The model backend failed while generating.",
                           code="backend_error") from None
        finally:
            observe.flush()
            _child(metrics.ACTIVE_STREAMS, self.transport).dec()
            relayed, ttft, usage = self._relayed, self._ttft, self._reported
            if usage is None or usage.completion_tokens < relayed:
                # Each output chunk holds at least one token; long pieces (a tool call's
                # arguments in one piece) count about four characters a token.
                prompt = usage.prompt_tokens if usage and usage.prompt_tokens else \
                    estimate_prompt_tokens(self.req)
                usage = Usage(prompt, max(relayed, self._chars // 4), estimated=True)
                self.usage_raw = None
            self.usage = usage
            if ticket is not None:
                self.gateway.dispatcher.done(queue, ticket, usage)
            if self.finish_reason is None and status == 200:
                self.finish_reason = "stop"
            try:
                await _shielded(self._finish(usage, outcome, status, error_code, ttft))
            finally:
                self.gateway.running.discard(running)
                running.settle()
        return self.usage

    async def _finish(self, usage: Usage, outcome: str, status: int,
                      error_code: str | None, ttft: float | None) -> None:
        await _settle(self.admissions, usage, outcome)
        _child(metrics.TOKENS, self.req.model, "in").inc(usage.prompt_tokens)
        _child(metrics.TOKENS, self.req.model, "out").inc(usage.completion_tokens)
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
            "queue_ms": round(self.queue_wait * 1000, 3) if self.queue_wait else None,
        })
