"""A model worker: one local engine (llamacpp, mlc) behind an OpenAI-compatible HTTP API.

The gateway's supervisor (``sdk.workers``) runs it as::

    python -m plugins.backends.worker_server --engine MODULE:CLASS --model NAME \
        --options JSON --fd N

with its listening socket inherited as file descriptor N. It loads the engine (the
model's weights), prints ``READY`` on stdout (or ``FAILED <reason>`` and exits), and
serves, to bearers of the token in
``AYCT_WORKER_TOKEN`` only:

- ``POST /v1/chat/completions`` and ``/v1/completions``: always streamed as OpenAI SSE
  events (the gateway relays them as it relays any OpenAI-compatible upstream), with a
  usage event before ``data: [DONE]``. A request the engine refuses before its first
  chunk gets the engine's own error (status and OpenAI JSON body).
- ``POST /v1/embeddings``, ``GET /v1/models``, and ``GET /v1/health``: the engine's health,
  with ``capacity`` (sequences it runs at once) for the gateway's scheduling.

A client that goes away cancels its generation at once. Nothing of a request's content
is logged. On SIGTERM, or when its parent is gone, the worker closes the engine and exits.
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import importlib
import json
import logging
import os
import signal
import socket
import threading
import time
from types import SimpleNamespace

import tornado.httpserver
import tornado.iostream
import tornado.web

from gateway import sdk
from gateway.sdk import APIError, ChunkEncoder, GenerationRequest, internal_error

log = logging.getLogger("allyoucantoken.worker")
TOKEN_ENV = "AYCT_WORKER_TOKEN"   # the same name as sdk.workers.TOKEN_ENV
EXIT_GRACE = 2.0                  # seconds from SIGTERM to exit, at the most


class _Handler(tornado.web.RequestHandler):
    """Token check and JSON answers shared by the worker's routes."""

    def initialize(self, engine, model: str, token: str) -> None:
        self.engine, self.model, self.token = engine, model, token

    def prepare(self) -> None:
        stream = self.request.connection.stream
        if stream is not None:
            stream.set_nodelay(True)    # each event goes out as it is written
        presented = self.request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(presented, f"Bearer {self.token}".encode()):
            self.answer(APIError(401, "This is a model worker of the gateway.",
                                 code="invalid_api_key"))

    def answer(self, err: APIError) -> None:
        self.set_status(err.status)
        for name, value in err.headers.items():
            self.set_header(name, value)
        self.finish(err.body())

    def body(self) -> dict:
        try:
            data = json.loads(self.request.body)
        except ValueError:
            raise APIError(400, "The body is not JSON.", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "The body must be a JSON object.", code="invalid_json")
        return data

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        err = exc if isinstance(exc, APIError) else internal_error()
        self.set_status(err.status)
        self.finish(err.body())


class GenerateHandler(_Handler):
    """POST a chat or text completion: SSE events, as an OpenAI server streams them."""

    def initialize(self, engine, model: str, token: str, kind: str) -> None:
        super().initialize(engine, model, token)
        self.kind = kind
        self._task: asyncio.Task | None = None

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()       # the gateway's client went away: stop at once

    async def post(self) -> None:
        self._task = asyncio.current_task()
        try:
            await self._generate()
        except (asyncio.CancelledError, tornado.iostream.StreamClosedError):
            pass

    async def _generate(self) -> None:
        body = self.body()
        request_id = body.pop("request_id", None) or "gen-" + os.urandom(8).hex()
        req = GenerationRequest(self.kind, self.model, body, body.get("max_tokens"),
                                request_id)
        stream = _meaningful((self.engine.chat if self.kind == "chat"
                              else self.engine.completions)(req))
        try:
            try:
                first = await anext(stream)
            except StopAsyncIteration:
                first = None
            except APIError as err:
                return self.answer(err)
            self.set_header("Content-Type", "text/event-stream")
            self.set_header("Cache-Control", "no-cache")
            encoder = ChunkEncoder(self.kind, request_id, self.model, int(time.time()), False)
            chunk = first
            try:
                while chunk is not None:
                    if chunk.usage is not None and chunk.delta is None and not chunk.text \
                            and not chunk.finish_reason:
                        self.write(encoder.usage(chunk.usage))
                    else:
                        self.write(encoder.encode(chunk))
                    await self.flush()
                    chunk = await anext(stream, None)
            except APIError as err:     # after the first chunk: an error event
                self.write(ChunkEncoder.error(err.body()))
            except Exception as exc:  # noqa: BLE001 - reported as an error event
                log.error("model %s failed while generating: %s", self.model,
                          type(exc).__name__)
                self.write(ChunkEncoder.error(internal_error("generation").body()))
            self.write("data: [DONE]\n\n")
            self.finish()
        finally:
            await stream.aclose()


async def _meaningful(stream):
    """The engine's chunks without the empty ones (a role-only first delta): the client
    gets the events an in-process engine's stream gave it."""
    try:
        async for chunk in stream:
            if chunk.text or chunk.delta or chunk.finish_reason or chunk.usage is not None \
                    or chunk.logprobs is not None:
                yield chunk
    finally:
        await stream.aclose()


class EmbeddingsHandler(_Handler):
    """POST /v1/embeddings: float vectors and the prompt tokens used. The body may name
    the caller's ``account`` (the gateway sets it), by which the engine shares its
    embedder. A client that goes away cancels the request: the engine stops it before
    its next batch."""

    def initialize(self, engine, model: str, token: str) -> None:
        super().initialize(engine, model, token)
        self._task: asyncio.Task | None = None

    def on_connection_close(self) -> None:
        if self._task is not None:
            self._task.cancel()       # the engine sets the request's cancel flag

    async def post(self) -> None:
        self._task = asyncio.current_task()
        body = self.body()
        req = GenerationRequest("embeddings", self.model, body, None, "")
        try:
            vectors, usage = await self.engine.embeddings(req)
        except APIError as err:
            return self.answer(err)
        except (asyncio.CancelledError, tornado.iostream.StreamClosedError):
            return
        finally:
            self._task = None
        self.finish({"object": "list", "model": self.model,
                     "data": [{"object": "embedding", "index": i, "embedding": v}
                              for i, v in enumerate(vectors)],
                     "usage": {"prompt_tokens": usage.prompt_tokens,
                               "total_tokens": usage.prompt_tokens}})


class ModelsHandler(_Handler):
    """GET /v1/models: the one model (the gateway's health probe)."""

    def get(self) -> None:
        self.finish({"object": "list", "data": [{"id": self.model, "object": "model",
                                                  "created": 0, "owned_by": "worker"}]})


class HealthHandler(_Handler):
    """GET /health: the engine's health, with ``capacity`` and the worker's pid."""

    async def get(self) -> None:
        health = dict(await self.engine.health())
        health.setdefault("capacity", 1)
        health["pid"] = os.getpid()
        self.finish(health)


def make_app(engine, model: str, token: str) -> tornado.web.Application:
    """The worker's routes around ``engine``."""
    common = {"engine": engine, "model": model, "token": token}
    return tornado.web.Application([
        (r"/v1/chat/completions", GenerateHandler, {**common, "kind": "chat"}),
        (r"/v1/completions", GenerateHandler, {**common, "kind": "completion"}),
        (r"/v1/embeddings", EmbeddingsHandler, common),
        (r"/v1/models", ModelsHandler, common),
        (r"/v1/health", HealthHandler, common),
    ], compress_response=False, log_function=lambda handler: None)


def load_engine(spec: str, model: str, options: dict):
    """The engine object: ``module:Class`` called with the model's config."""
    module_name, _, attr = spec.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(SimpleNamespace(name=model, options=options, backend="worker"), None)


async def serve(engine_spec: str, model: str, options: dict, fd: int) -> None:
    """Load the engine, serve on the inherited socket ``fd`` until SIGTERM or until the
    parent is gone."""
    try:
        engine = load_engine(engine_spec, model, options)
        await engine.start()
    except Exception as exc:  # noqa: BLE001 - one line for the supervisor, then exit
        reason = " ".join(str(exc).split())[:500] or type(exc).__name__
        print(f"FAILED {reason}", flush=True)
        raise SystemExit(1) from None
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    server = tornado.httpserver.HTTPServer(make_app(engine, model, os.environ[TOKEN_ENV]),
                                           idle_connection_timeout=3600)
    server.add_sockets([sock])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    os.dup2(2, 1)       # anything native code prints goes to the log, not the pipe
    await sdk.workers.until_stopped_or_orphaned(stop)   # or the gateway went away
    server.stop()
    # The engine's close may wait on a native generation thread: exit within EXIT_GRACE
    # whatever it is doing.
    timer = threading.Timer(EXIT_GRACE, os._exit, [0])
    timer.daemon = True
    timer.start()
    try:
        await asyncio.wait_for(engine.close(), EXIT_GRACE)
    except Exception:  # noqa: BLE001 - exiting anyway
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--engine", required=True, help="module:Class of the engine")
    parser.add_argument("--model", required=True)
    parser.add_argument("--options", default="{}", help="the model's options, as JSON")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s model-worker {ns.model}: "
                               "%(message)s")
    asyncio.run(serve(ns.engine, ns.model, json.loads(ns.options), ns.fd))


if __name__ == "__main__":
    main()
