"""OpenAI Responses API, stateless: ``POST /v1/responses`` (JSON or typed SSE events).

The body is translated to a Chat Completions request
(:func:`gateway.relay.translate_responses.to_chat`) and goes through the same
:class:`gateway.relay.pipeline.RequestPipeline` as ``/v1/chat/completions`` (auth, tier
limits, fair queue, usage recorded with ``transport="responses"``); the Chunks of the
generation are turned back into the response object or its events
(:class:`gateway.relay.translate_responses.ResponseBuilder`).

Nothing is stored: ``GET``/``DELETE /v1/responses/{id}`` (and ``.../input_items``,
``.../cancel``) answer 400 saying the service keeps no content, as do
``previous_response_id`` and ``conversation`` in a request.
"""
from __future__ import annotations

import asyncio

from tornado.iostream import StreamClosedError

from gateway.errors import APIError
from gateway.handlers.base import BaseAPIHandler
from gateway.handlers.openai import GenerationService
from gateway.http.lean import LeanHandler
from gateway.http import drain
from gateway.obs import metrics
from gateway.relay.pipeline import RequestPipeline
from gateway.relay.streaming import ClientGone, Generation
from gateway.relay.translate_responses import ResponseBuilder, to_chat
from gateway.relay.validation import loads_async
from gateway.types import Chunk
from gateway.handlers.sink import StreamSink

ROUTE = "/v1/responses"
STORED_MESSAGE = ("This service keeps no content: responses are never stored, so none can "
                  "be retrieved, listed, cancelled or deleted. Send the whole context in "
                  "`input` with every request (no previous_response_id).")


class ResponsesService(GenerationService):
    """POST /v1/responses: translated to a chat request, answered as a response object
    or typed events. A mixin, like :class:`GenerationService`, over the Tornado handler
    (:class:`ResponsesHandler`) or the lean path's (:class:`LeanResponses`)."""

    def on_finish(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        metrics.count_request(self.gateway, ROUTE, pipeline.model if pipeline else None,
                              499 if getattr(self, "_cut", False) else self.get_status())

    async def serve(self) -> None:
        self._task = None
        self._cut = False
        pipeline = self.pipeline = RequestPipeline(self.gateway, "chat", "responses")
        principal = None
        try:
            self.check_body_size()
            principal = await self.require_principal()
            raw = self.request.body
            body = await loads_async(raw, "body of your request")
            chat = to_chat(body)
        except APIError as err:
            if principal is not None:
                pipeline.refused(principal, err)
            return self.send_api_error(err)
        try:
            gen = await pipeline.start(principal, chat, len(raw))
        except APIError as err:
            return self.send_api_error(err)
        self.request.body = b""   # parsed: not kept while the response streams
        self.request.completion_id = gen.req.request_id
        for name, value in gen.headers.items():
            self.set_header(name, value)
        builder = ResponseBuilder(body, gen.req.model, events=bool(chat.get("stream")))
        body = chat = raw = None   # the content is not kept beyond the translation
        if builder.events:
            await self._stream_events(gen, builder)
        else:
            await self._complete_response(gen, builder)

    async def _complete_response(self, gen: Generation, builder: ResponseBuilder) -> None:
        async def emit(chunk: Chunk) -> None:
            builder.add(chunk)

        try:
            if not await self._run(gen, emit):
                return await drain.end_cut_off(self)
        except APIError as err:
            return self.send_api_error(err)
        _, obj = builder.finish(gen.usage, gen.finish_reason)
        self.write_json(obj)

    async def _stream_events(self, gen: Generation, builder: ResponseBuilder) -> None:
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.request.connection.stream.set_nodelay(True)
        sink = _EventSink(self, builder)
        gen.on_queued = sink.queued
        self._task = asyncio.current_task()
        try:
            await gen.run(sink.emit)
        except (asyncio.CancelledError, ClientGone):
            self._cut_off()
            if self.gateway.draining and not self.request.connection.stream.closed():
                if sink.sent == 0:
                    return await drain.end_cut_off(self)
                self.write("".join(builder.failed(drain.shutdown_error().body()["error"])))
                try:
                    await self.finish()
                except StreamClosedError:
                    pass
            return
        except APIError as err:
            self._task = None
            if not sink.started:
                return self.send_api_error(err)
            self.write("".join(builder.failed(err.body()["error"])))
            try:
                await self.finish()
            except StreamClosedError:
                pass
            return
        except BaseException:
            self._task = None
            raise
        self._task = None
        events, _ = builder.finish(gen.usage, gen.finish_reason)
        self.write("".join(events))
        try:
            await self.finish()
        except StreamClosedError:
            pass


class ResponsesHandler(ResponsesService, BaseAPIHandler):
    """POST /v1/responses, on the Tornado application (while draining, other methods)."""

    async def post(self) -> None:
        await self.serve()


class LeanResponses(ResponsesService, LeanHandler):
    """POST /v1/responses, lean path"""


class _EventSink(StreamSink):
    """Writes the typed events a chunk makes, with backpressure (as the chat SSE sink)."""

    __slots__ = ("builder",)

    def __init__(self, handler: ResponsesService, builder: ResponseBuilder) -> None:
        super().__init__(handler)
        self.builder = builder

    async def queued(self, position: int) -> None:
        await self.keepalive(": queued\n\n")

    async def emit(self, chunk: Chunk) -> None:
        events = self.builder.add(chunk)
        if events:
            await self.write("".join(events), len(events))


class StoredResponseHandler(BaseAPIHandler):
    """``/v1/responses/{id}`` and what hangs under it: nothing is stored, so a 400 that
    says so (after auth: a caller without a key gets the usual 401)."""

    def on_finish(self) -> None:
        metrics.count_request(self.gateway, ROUTE + "/{id}", None, self.get_status())

    async def _refuse(self, *args) -> None:
        try:
            await self.require_principal()
            raise APIError(400, STORED_MESSAGE, code="stateless_service")
        except APIError as err:
            return self.send_api_error(err)

    get = post = delete = _refuse


ROUTES = [
    (r"/v1/responses", ResponsesHandler),
    (r"/v1/responses/(.+)", StoredResponseHandler),
]
LEAN_ROUTES = {ROUTE: LeanResponses}
