"""The Anthropic Messages API: ``POST /v1/messages`` (JSON or SSE) and
``POST /v1/messages/count_tokens``.

The body is translated to a chat request (:mod:`gateway.relay.translate_messages`) and
goes through the same :class:`gateway.relay.pipeline.RequestPipeline` as
``/v1/chat/completions`` (auth, validation, tier limits, fair queue, usage rollups with
the transport ``"messages"``); the Chunks come back as a Messages object or its SSE
events. The key comes as ``x-api-key`` or ``Authorization: Bearer`` (the same API keys);
``anthropic-version`` and ``anthropic-beta`` are accepted and not needed. Errors are in
Anthropic's shape, with 529 ``overloaded_error`` when the backends are busy.
"""
from __future__ import annotations

import asyncio
import json

from tornado.iostream import StreamClosedError

from gateway.errors import APIError
from gateway.handlers.base import BaseAPIHandler
from gateway.handlers.openai import GenerationService
from gateway.http.lean import LeanHandler
from gateway.http import drain
from gateway.http.requestid import token_hex
from gateway.obs import metrics
from gateway.relay import translate_messages as tm
from gateway.relay.pipeline import RequestPipeline
from gateway.relay.streaming import Generation, estimate_prompt_tokens
from gateway.relay.validation import parse_json
from gateway.types import Chunk, GenerationRequest
from gateway.handlers.sink import StreamSink


class MessagesPipeline(RequestPipeline):
    """The chat pipeline, with Messages ids (``msg_...``) and the transport named."""

    def __init__(self, gateway, started: float | None = None) -> None:
        super().__init__(gateway, "chat", "messages", started)

    def build(self) -> GenerationRequest:
        req = super().build()
        req.request_id = "msg_" + token_hex(12)
        return req


class AnthropicErrors:
    """Errors in Anthropic's shape; the key from ``x-api-key`` or Bearer (a mixin over a
    Tornado handler or the lean path's)."""

    def send_api_error(self, err: APIError, exc: BaseException | None = None) -> None:
        super().send_api_error(tm.anthropic_error(err), exc)

    async def require_principal(self):
        if not self.request.headers.get("Authorization") and \
                not self.request.headers.get("x-api-key"):
            raise APIError(401, "No API key: send it in the x-api-key header (or as "
                                "'Authorization: Bearer YOUR_KEY').", code="missing_api_key")
        return await super().require_principal()

    def read_body(self) -> dict:
        self.check_body_size()
        return parse_json(self.request.body or b"")

    def render_error(self, err: APIError, exc: BaseException | None = None) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(tm.error_body(err)))


class AnthropicHandler(AnthropicErrors, BaseAPIHandler):
    """A Tornado handler of the Anthropic API."""

    def on_finish(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        metrics.count_request(self.gateway, self.request.path,
                              pipeline.model if pipeline else None,
                              499 if getattr(self, "_cut", False) else self.get_status())


class MessagesService(AnthropicErrors, GenerationService):
    """POST /v1/messages: translated to a chat request, answered as a message object or
    Anthropic's stream events; a mixin like :class:`GenerationService` (whose run,
    disconnect and request counting it shares) over the Tornado handler
    (:class:`MessagesHandler`) or the lean path's (:class:`LeanMessages`)."""

    async def serve(self) -> None:
        self._task: asyncio.Task | None = None
        self._cut = False
        pipeline = self.pipeline = MessagesPipeline(self.gateway)
        try:
            principal = await self.require_principal()
            body = self.read_body()
            try:
                chat = tm.to_chat(body)
                self._thinking = tm.wants_thinking(body)
            except APIError as err:
                pipeline.refused(principal, err)
                raise
            gen = await pipeline.start(principal, chat, len(self.request.body))
        except APIError as err:
            return self.send_api_error(err)
        self.request.body = b""
        self.request.completion_id = gen.req.request_id
        for name, value in gen.headers.items():
            self.set_header(name, value)
        if chat.get("stream"):
            await self._stream(gen)
        else:
            await self._complete(gen)

    async def _complete(self, gen: Generation) -> None:
        acc = await self._collect(gen, True)
        if acc is None:
            return
        choice = acc.result(gen.finish_reason)[0]
        self.write_json(tm.message_object(gen.req.request_id, gen.req.model, choice,
                                          gen.usage, self._thinking, gen.stop_sequence))

    async def _stream(self, gen: Generation) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.request.connection.stream.set_nodelay(True)
        events = tm.MessageStream(gen.req.request_id, gen.req.model,
                                  estimate_prompt_tokens(gen.req), self._thinking)
        sink = StreamSink(self)

        async def queued(position: int) -> None:
            await sink.keepalive(tm.PING)    # waiting for the model's capacity: a ping

        async def emit(chunk: Chunk) -> None:
            text = events.chunk(chunk)
            if text:
                await sink.write(text)

        gen.on_queued = queued
        try:
            if not await self._run(gen, emit):
                return await drain.end_cut_off(self, _ERROR_EVENTS, sink.sent + sink.keepalives)
        except APIError as err:
            if not sink.started:
                return self.send_api_error(err)
            self.write(tm.event("error", tm.error_body(tm.anthropic_error(err))))
            return self.finish()
        self.write(events.end(gen.finish_reason, gen.usage, gen.stop_sequence))
        try:
            await self.finish()
        except StreamClosedError:
            pass


class MessagesHandler(MessagesService, BaseAPIHandler):
    """POST /v1/messages, on the Tornado application (while draining, other methods)."""

    async def post(self) -> None:
        await self.serve()


class LeanMessages(MessagesService, LeanHandler):
    """POST /v1/messages, lean path"""


class _ErrorEvents:
    """What :func:`gateway.http.drain.end_cut_off` writes when the drain cuts a stream
    off: an OpenAI error body as the Messages ``error`` event."""

    @staticmethod
    def error(body: dict) -> str:
        return tm.event("error", {"type": "error", "error": {
            "type": "api_error", "message": body["error"]["message"]}})


_ERROR_EVENTS = _ErrorEvents()


class CountTokensHandler(AnthropicHandler):
    """POST /v1/messages/count_tokens: the gateway's prompt estimate (about four
    characters a token, tool definitions included), as the limiters see it."""

    async def post(self) -> None:
        try:
            principal = await self.require_principal()
            chat = tm.to_chat(self.read_body(), count_only=True)
            model = chat["model"]
            self.gateway.backend_for(model)
            if model not in self.gateway.models_for(principal):
                raise APIError(404, f"The model `{model}` does not exist or you do not have "
                                    "access to it.", param="model", code="model_not_found")
        except APIError as err:
            return self.send_api_error(err)
        req = GenerationRequest("chat", model, chat)
        self.write_json({"input_tokens": estimate_prompt_tokens(req)})


ROUTES = [
    (r"/v1/messages", MessagesHandler),
    (r"/v1/messages/count_tokens", CountTokensHandler),
]
LEAN_ROUTES = {"/v1/messages": LeanMessages}
