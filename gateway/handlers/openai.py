"""OpenAI-compatible API: /v1/models, /v1/chat/completions, /v1/completions (SSE + JSON)."""
from __future__ import annotations

import asyncio
import time

from tornado import httputil
from tornado.iostream import StreamClosedError

from gateway.http import drain

from gateway.obs import metrics

from gateway.http import tornado_compat
from gateway.errors import APIError
from gateway.handlers.base import BaseAPIHandler
from gateway.http.lean import LeanHandler
from gateway.relay.pipeline import RequestPipeline
from gateway.http.sse import ChunkEncoder
from gateway.relay.streaming import Accumulator, ClientGone, Generation
from gateway.types import Chunk
from gateway.handlers.sink import StreamSink


class ModelsHandler(BaseAPIHandler):
    """GET /v1/models and /v1/models/{id}: the models this caller may use, with health."""

    def on_finish(self) -> None:
        metrics.count_request(self.gateway, "/v1/models", None, self.get_status())

    async def get(self, model_id: str | None = None) -> None:
        try:
            principal = await self.require_principal()
            names = self.gateway.models_for(principal)
            if model_id is not None and model_id not in names:
                raise APIError(404, f"The model `{model_id}` does not exist or you do not "
                                    "have access to it.", param="model", code="model_not_found")
            wanted = [model_id] if model_id else names
            healths = await asyncio.gather(*(self.gateway.backends[n].health() for n in wanted))
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "allyoucantoken",
                     "backend": self.gateway.config.model(n).backend,
                     "health": "ok" if h.get("ok") else
                     "restarting" if h.get("state") == "restarting" else "unavailable",
                     "capabilities": list(getattr(self.gateway.backends[n], "capabilities",
                                                  ("chat", "completions")))}
                    for n, h in zip(wanted, healths)]
        except APIError as err:
            return self.send_api_error(err)
        self.write_json(data[0] if model_id else {"object": "list", "data": data})


class GenerationService:
    """POST a chat or text completion; streams SSE when ``stream`` is true.

    The body goes through :class:`gateway.relay.pipeline.RequestPipeline` (validate, build,
    admit); this writes the answer: SSE events or one JSON body. A mixin over the
    handler that serves the HTTP: a Tornado ``RequestHandler`` (:class:`GenerationHandler`)
    or the lean path's :class:`gateway.http.lean.LeanHandler` (:class:`LeanGeneration`)."""

    kind = "chat"

    async def serve(self) -> None:
        self._task: asyncio.Task | None = None   # set while the generation runs
        self._cut = False                        # the generation was cut off (499)
        pipeline = self.pipeline = RequestPipeline(self.gateway, self.kind)
        request = self.request
        try:
            self.check_body_size()
            principal = await self.require_principal()
            gen = await pipeline.start(principal, request.body)
        except APIError as err:
            return self.send_api_error(err)
        request.body = b""              # parsed: not kept while the response streams
        data = pipeline.data
        request.completion_id = gen.req.request_id  # x-request-id unless the client sent one
        if gen.headers:
            for name, value in gen.headers.items():
                self.set_header(name, value)
        if data.get("stream"):
            await self._stream(gen, data)
        else:
            await self._complete(gen)

    def on_finish(self) -> None:
        pipeline = getattr(self, "pipeline", None)   # the model, once the body is valid
        metrics.count_request(self.gateway, self.request.path,
                              pipeline.model if pipeline else None,
                              499 if getattr(self, "_cut", False) else self.get_status())

    def on_connection_close(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()

    async def _run(self, gen: Generation, emit) -> bool:
        """Run the generation in this handler's own task (no task per request); a
        disconnect cancels it while it runs (and only then). False: it was cut off."""
        self._task = asyncio.current_task()
        try:
            await gen.run(emit)
        except (asyncio.CancelledError, ClientGone):
            self._cut_off()
            return False
        except BaseException:
            self._task = None
            raise
        self._task = None
        return True

    def _cut_off(self) -> None:
        """The generation ended because the client left or the drain cut it off: the
        cancellation is handled (the response is ended by the caller)."""
        task, self._task, self._cut = self._task, None, True
        while task.cancelling():
            task.uncancel()

    # -- streaming (SSE) -------------------------------------------------
    async def _stream(self, gen: Generation, data: dict) -> None:
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        encoder = ChunkEncoder(self.kind, gen.req.request_id, gen.req.model,
                               int(time.time()), include_usage)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        # Send each event at once (no Nagle delay): a no-op where RequestGuard already
        # turned it on for the connection's lifetime.
        self.request.connection.stream.set_nodelay(True)
        sink = _SSESink(self, encoder)
        gen.on_queued = sink.queued
        self._task = asyncio.current_task()   # _run, inline (one coroutine frame fewer)
        try:
            await gen.run(sink.emit)
        except (asyncio.CancelledError, ClientGone):
            self._cut_off()
            return await drain.end_cut_off(self, encoder, sink.sent)
        except APIError as err:
            self._task = None
            if not sink.started:
                return self.send_api_error(err)
            self.write(encoder.error(err.body()))
            return self.finish()
        except BaseException:
            self._task = None
            raise
        self._task = None
        if include_usage:
            self.write(encoder.usage(gen.usage, gen.usage_raw))
        self.write("data: [DONE]\n\n")
        try:
            await self.finish()
        except StreamClosedError:
            pass

    # -- non-streaming ------------------------------------------------------
    async def _collect(self, gen: Generation, chat: bool) -> Accumulator | None:
        """Run the generation into an :class:`Accumulator` (non-streamed answers); None
        when the answer was already given (cut off, or an error)."""
        acc = Accumulator(chat)

        async def emit(chunk: Chunk) -> None:
            acc.add(chunk)

        try:
            if not await self._run(gen, emit):
                await drain.end_cut_off(self)
                return None
        except APIError as err:
            self.send_api_error(err)
            return None
        return acc

    async def _complete(self, gen: Generation) -> None:
        acc = await self._collect(gen, self.kind == "chat")
        if acc is None:
            return
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        self.write_json({"id": gen.req.request_id, "object": obj, "created": int(time.time()),
                         "model": gen.req.model, "choices": acc.result(gen.finish_reason),
                         "usage": gen.usage.as_openai(), **acc.extra})


class _SSESink(StreamSink):
    """Writes a stream's chunks as SSE events: one small object per stream instead of a
    closure and its cells."""

    __slots__ = ("encoder",)

    def __init__(self, handler: GenerationService, encoder: ChunkEncoder) -> None:
        super().__init__(handler)
        self.encoder = encoder

    async def queued(self, position: int) -> None:
        """Waiting for the model's capacity: an SSE comment keeps the stream alive."""
        await self.keepalive(": queued\n\n")

    async def emit(self, chunk: Chunk) -> None:
        await self.write(self.encoder.encode(chunk))
        if self.sent == 1 and tornado_compat.headers_written(self.handler):
            # The response headers are out (the first event is flushed at once): Tornado
            # no longer reads them; not kept while the stream stays open.
            tornado_compat.replace_headers(self.handler, _WRITTEN_HEADERS)


class _WrittenHeaders(httputil.HTTPHeaders):
    """Stands for a response's headers once written: empty, and anything set later (it
    could not be sent any more) is dropped."""

    def __setitem__(self, name: str, value: str) -> None:
        pass

    def add(self, name: str, value: str, *args, **kwargs) -> None:
        pass


_WRITTEN_HEADERS = _WrittenHeaders()


class GenerationHandler(GenerationService, BaseAPIHandler):
    """A completion route on the Tornado application: the requests the lean path does
    not take (methods other than POST, which answer 405). While the gateway drains, POSTs
    stay on the lean path (``Connection: close``); once the drain has stopped waiting,
    ``GatewayApplication.find_handler`` (:mod:`gateway.app`) sends every ``/v1/*``
    request to ``DrainingHandler`` (503 ``server_shutdown``), never here."""

    async def post(self) -> None:
        await self.serve()


class LeanGeneration(GenerationService, LeanHandler):
    """A completion route on the lean path (:mod:`gateway.http.lean`)."""


class ChatCompletionsHandler(GenerationHandler):
    """POST /v1/chat/completions"""

    kind = "chat"


class CompletionsHandler(GenerationHandler):
    """POST /v1/completions"""

    kind = "completion"


class LeanChatCompletions(LeanGeneration):
    """POST /v1/chat/completions, lean path"""

    kind = "chat"


class LeanCompletions(LeanGeneration):
    """POST /v1/completions, lean path"""

    kind = "completion"


ROUTES = [
    (r"/v1/models", ModelsHandler),
    (r"/v1/models/([^/]+)", ModelsHandler),
    (r"/v1/chat/completions", ChatCompletionsHandler),
    (r"/v1/completions", CompletionsHandler),
]

LEAN_ROUTES = {"/v1/chat/completions": LeanChatCompletions,
               "/v1/completions": LeanCompletions}
