"""One request pipeline for every transport: from a request body to an admitted
:class:`gateway.relay.streaming.Generation`.

The SSE/JSON handlers (``/v1/chat/completions``, ``/v1/completions``), the WebSocket
handler (``/v1/chat/ws``) and the embeddings handler authenticate in their own way, then
hand the body to a :class:`RequestPipeline`, which

1. validates it (raw bytes from HTTP, or an object already decoded from a WebSocket
   message), with the model's policy for unknown fields;
2. builds the :class:`GenerationRequest` and checks what the model's backend can do
   (before the limiters: a refused request spends no quota);
3. admits it: every limiter admits, or the first denial is raised as an ``APIError``
   (the others' reservations released);
4. records a refusal (usage event, metadata only) before raising it: a denial by a
   limiter, and also a body that fails validation (400), an unknown model (404) or what
   the backend cannot do (400), so the usage rollups count every answered request of a
   known key by status class (``status_4xx``, ``errors``...).

What stays in the handlers is transport: reading the body and credentials, and writing
the answer (SSE events, a JSON body, WebSocket messages).
"""
from __future__ import annotations

import time
from typing import Any

from gateway.errors import APIError
from gateway.http.requestid import token_hex
from gateway.relay.streaming import Generation
from gateway.types import GenerationRequest, Principal
from gateway.relay.validation import (check_backend, params_policy, parse_and_validate_async,
                                validate_async)

ID_PREFIXES = {"chat": "chatcmpl-", "completion": "cmpl-"}


class RequestPipeline:
    """One request's way from body to admitted :class:`Generation` (see the module).

    ``transport`` names the transport in metrics and usage (``"ws"``, ``"http"``...);
    ``None`` means HTTP: ``"sse"`` when the body asks to stream, else ``"http"``.
    ``started`` is when the request arrived (``time.perf_counter()``). After a step
    fails, :attr:`model` still tells which model the request named, once the body was
    valid (for the request metrics), and :attr:`gen` the Generation once admission
    began (its usage is zero until it runs).

    Subclasses change a step: :meth:`policy` (unknown fields), :meth:`build`
    (the request object and the backend check).
    """

    def __init__(self, gateway, kind: str, transport: str | None = None,
                 started: float | None = None) -> None:
        self.gateway = gateway
        self.kind = kind
        self.transport = transport
        self.started = time.perf_counter() if started is None else started
        self.data: dict[str, Any] | None = None    # the validated body
        self.req: GenerationRequest | None = None
        self.gen: Generation | None = None         # once admission began

    @property
    def model(self) -> str | None:
        """The model the validated body names (None before validation succeeded)."""
        return self.data["model"] if self.data is not None else None

    async def start(self, principal: Principal, body: bytes | dict[str, Any],
                    size: int = 0) -> Generation:
        """All the steps: validate ``body`` (``size``: a decoded object's size in bytes),
        build the request, admit it. Raises ``APIError`` for a refusal."""
        try:
            if isinstance(body, (bytes, bytearray)):
                await self.parse(bytes(body))
            else:
                await self.validate(body, size)
            self.build()
        except APIError as err:
            self.refused(principal, err)
            raise
        return await self.admit(principal)

    def refused(self, principal: Principal, err: APIError) -> None:
        """Record a request refused before admission (usage event, metadata only)."""
        transport = self.transport or ("sse" if self.data and self.data.get("stream") is True
                                       else "http")
        record_refusal(self.gateway, principal, err, self.kind, transport, self.model,
                       self.started, self.req.request_id if self.req else None)

    # -- 1. validate --------------------------------------------------------------------
    def policy(self):
        """``policy(model)`` for fields the gateway does not know (see
        :func:`gateway.relay.validation.params_policy`); ``None``: refuse them."""
        return params_policy(self.gateway)

    async def parse(self, raw: bytes) -> dict[str, Any]:
        """Decode and validate an HTTP body (400 naming what is wrong)."""
        self.data = await parse_and_validate_async(self.kind, raw, self.policy())
        return self.data

    async def validate(self, body: dict[str, Any], size: int) -> dict[str, Any]:
        """Validate an object already decoded (``size``: its size in bytes)."""
        model = body.get("model")
        policy = self.policy()
        await validate_async(self.kind, body, size, policy(model)
                             if policy is not None and type(model) is str else "refuse")
        self.data = body
        return body

    # -- 2. build -------------------------------------------------------------------------
    def build(self) -> GenerationRequest:
        """The request the limiters and the backend see, with a new request id; 404 for
        an unknown model, 400 for what its backend cannot do."""
        data = self.data
        max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
        self.req = GenerationRequest(self.kind, data["model"], data, max_tokens,
                                     ID_PREFIXES[self.kind] + token_hex(12))
        check_backend(self.gateway.backend_for(self.req.model), data)
        return self.req

    # -- 3. admit, 4. record a denial ---------------------------------------------------
    async def admit(self, principal: Principal) -> Generation:
        """Run the limiters; a denial is recorded (usage event) and raised."""
        transport = self.transport or ("sse" if self.data.get("stream") else "http")
        gen = self.gen = Generation(self.gateway, principal, self.req, transport,
                                    self.started)
        try:
            await gen.admit()
        except APIError as err:
            gen.record(err.status, err.code)
            raise
        return gen


def record_refusal(gateway, principal: Principal | None, err: APIError, kind: str | None,
                   transport: str, model: str | None = None, started: float | None = None,
                   request_id: str | None = None) -> None:
    """Count a request answered with an error before any generation ran (invalid body,
    unknown model, refused while draining...) in the usage rollups: status and error
    code, no tokens, never content. Only for a known key (a ``principal``); a model name
    that is not configured is recorded as ``-`` (a client cannot make new rollups)."""
    if principal is None:
        return
    if not (isinstance(model, str) and model in gateway.backends):
        model = "-"
    gateway.usage.record({
        "request_id": request_id, "account_id": principal.account_id,
        "key_id": principal.key_id, "model": model, "kind": kind, "transport": transport,
        "status": err.status, "error_code": err.code, "prompt_tokens": 0,
        "completion_tokens": 0, "estimated": False, "ttft_ms": None,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3)
        if started is not None else None})
