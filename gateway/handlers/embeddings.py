"""POST /v1/embeddings: OpenAI's embeddings API through the same auth, limits and usage
accounting as completions.

The body is checked by the bounded validator (``embedding`` schema), and a request with
more inputs than ``embeddings.max_inputs`` is a 400 before admission. The limiters see
a ``GenerationRequest`` of kind ``"embedding"`` with ``max_tokens=1``: they reserve the
input's token estimate (plus that one token) against requests/tokens per minute and
tokens per day, and settle with the backend's real prompt token count. Usage is
recorded with kind ``"embedding"`` (prompt tokens, no completion tokens).
A model's backend serves embeddings when its ``capabilities`` list holds
``"embeddings"`` and it has an ``embeddings(request)`` coroutine returning
``(vectors, Usage)`` (``None`` for usage the backend does not know: the input is then
counted by estimate); any other model gets a 400 ``model_not_supported``.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import secrets

import numpy as np

from gateway.obs import metrics
from gateway.errors import APIError
from gateway.handlers.base import BaseAPIHandler
from gateway.relay.pipeline import RequestPipeline
from gateway.relay.streaming import estimate_prompt_tokens
from gateway.types import GenerationRequest, Usage

log = logging.getLogger("allyoucantoken.embeddings")


class EmbeddingRequest(GenerationRequest):
    """A GenerationRequest whose ``prompt`` stands for ``input``, so the limiters'
    prompt estimate counts it (token arrays count one token per id). ``account`` is the
    caller's account id: a local model worker shares its embedder between accounts
    in turn."""

    account: str = ""

    @property
    def prompt(self) -> str:
        items = self.body.get("input", "")
        if isinstance(items, str) or (items and isinstance(items[0], int)):
            items = [items]
        return "".join(i if isinstance(i, str) else " " * (4 * len(i)) for i in items)


def capabilities(backend) -> list[str]:
    """What a backend serves: its ``capabilities`` list, else chat and completions (plus
    embeddings when it has an ``embeddings`` method)."""
    caps = getattr(backend, "capabilities", None)
    if caps is not None:
        return list(caps)
    return ["chat", "completions"] + (["embeddings"] if hasattr(backend, "embeddings") else [])


def encode(vector, fmt: str | None):
    """A vector as OpenAI sends it: a list of floats, or base64 of little-endian float32."""
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


class EmbeddingPipeline(RequestPipeline):
    """The shared pipeline with the embeddings' own steps: unknown fields are refused,
    the model must serve embeddings (400 ``model_not_supported``), and the request is an
    :class:`EmbeddingRequest` with ``max_tokens=1``."""

    def __init__(self, gateway) -> None:
        super().__init__(gateway, "embedding", "http")

    def policy(self):
        return None

    def build(self) -> GenerationRequest:
        data = self.data
        backend = self.gateway.backend_for(data["model"])
        if "embeddings" not in capabilities(backend) or not hasattr(backend, "embeddings"):
            raise APIError(400, f"The model `{data['model']}` does not serve embeddings; "
                                "see GET /v1/models for the models whose capabilities "
                                "include \"embeddings\".", param="model",
                           code="model_not_supported")
        cap = self.gateway.config.embeddings.max_inputs
        count = len(_items(data["input"]))
        if count > cap:
            raise APIError(400, f"'input' holds {count} inputs; this gateway embeds at most "
                                f"{cap} per request (embeddings.max_inputs): send them in "
                                "several requests.", param="input", code="too_many_inputs")
        self.req = EmbeddingRequest("embedding", data["model"], data, 1,
                                    "emb-" + secrets.token_hex(12))
        return self.req


class EmbeddingsHandler(BaseAPIHandler):
    """POST /v1/embeddings: :class:`EmbeddingPipeline` admits the request (the limiters'
    reservations and a denial's usage event as for completions); the backend's
    ``embeddings`` runs as a task a disconnect cancels (the relay then closes its
    connection to the backend, and a model worker stops between batches); limits settle
    and usage is
    recorded through the request's :class:`gateway.relay.streaming.Generation`."""

    def on_finish(self) -> None:
        pipeline = getattr(self, "pipeline", None)   # the model, once the body is valid
        metrics.count_request(self.gateway, "/v1/embeddings",
                              pipeline.model if pipeline else None,
                              self.get_status(), task=getattr(self, "_task", None))

    def on_connection_close(self) -> None:
        task = getattr(self, "_task", None)
        if task is not None and not task.done():
            task.cancel()

    async def post(self) -> None:
        self._task = None
        pipeline = self.pipeline = EmbeddingPipeline(self.gateway)
        try:
            self.check_body_size()
            principal = await self.require_principal()
            gen = await pipeline.start(principal, self.request.body)
        except APIError as err:
            return self.send_api_error(err)
        data, req = pipeline.data, gen.req
        req.account = principal.account_id
        backend = self.gateway.backend_for(req.model)
        self.request.completion_id = req.request_id
        for name, value in gen.headers.items():
            self.set_header(name, value)
        status, code, outcome, usage, error = 200, None, "ok", None, None
        self._task = asyncio.ensure_future(backend.embeddings(req))
        try:
            vectors, usage = await self._task
            if len(vectors) != len(_items(data["input"])):
                raise APIError(502, "The model backend returned the wrong number of "
                                    "embeddings.", code="backend_error")
        except asyncio.CancelledError:
            status, code, outcome = 499, "client_disconnected", "cancelled"
        except APIError as err:
            error = err
        except Exception as exc:  # noqa: BLE001 - answered as a 502
            log.error("embeddings backend %s failed: %s", req.model, type(exc).__name__)
            error = APIError(502, "The model backend failed while embedding.",
                             code="backend_error")
        if error is not None:
            status, code, outcome = error.status, error.code, "error"
        if usage is None:   # unknown (cut off, or not reported): the input's estimate
            usage = Usage() if outcome == "error" else \
                Usage(estimate_prompt_tokens(req), 0, estimated=True)
        for limiter, adm in gen.admissions:
            try:
                await limiter.settle(adm, usage, outcome)
            except Exception:
                log.exception("limiter %s failed to settle", getattr(limiter, "name", limiter))
        metrics.TOKENS.labels(req.model, "in").inc(usage.prompt_tokens)
        gen.usage = Usage(usage.prompt_tokens, 0, usage.estimated)
        gen.record(status, code)   # the usage event (metadata only), as completions
        if outcome == "cancelled":
            return
        if error is not None:
            return self.send_api_error(error)
        fmt = data.get("encoding_format")
        self.write_json({"object": "list", "model": req.model,
                         "data": [{"object": "embedding", "index": i,
                                   "embedding": encode(v, fmt)} for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": usage.prompt_tokens,
                                   "total_tokens": usage.prompt_tokens}})


def _items(inputs) -> list:
    if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
        return [inputs]
    return inputs


ROUTES = [(r"/v1/embeddings", EmbeddingsHandler)]
