"""The mlc engine: MLC-LLM (``mlc_llm.AsyncMLCEngine``), in a model worker process only.

``mlc_llm`` is imported only here, in the worker that ``plugins.backends.mlc`` has the
gateway's supervisor start (one per GPU), so the gateway process never loads it. MLC-LLM is not on PyPI; install its wheel for your GPU from
https://llm.mlc.ai/docs/install/mlc_llm.html. The backend uses the engine's documented
OpenAI-style API only:

  engine.chat.completions.create(messages=..., stream=True,
                                 stream_options={"include_usage": True}, request_id=...)
  engine.completions.create(prompt=..., stream=True, ...)
  await engine.abort(request_id)      # client went away: stop generating at once
  engine.terminate()                  # gateway shutdown

MLC reports zero usage for an aborted request; the gateway then counts the tokens it
relayed itself and marks the figure estimated (gateway/relay/streaming.py).

Model options (``[[models]] options``):
  model           compiled model directory or "HF://mlc-ai/<name>-MLC" (required)
  model_lib       compiled model library (.so); default: found or JIT-compiled by MLC
  device          "auto" (default), "cuda", "cuda:1", "rocm", "vulkan", "metal"
  mode            "local", "interactive" or "server" (default "server")
  engine_config   table of mlc_llm.serve.EngineConfig fields (e.g. gpu_memory_utilization)
  engine_factory  "module:callable" that builds the engine (default
                  "mlc_llm:AsyncMLCEngine"; tests point it at a stand-in)
"""
from __future__ import annotations

import importlib
import inspect
import logging
import uuid
from typing import Any, AsyncIterator

from gateway.sdk import APIError, Chunk, ConfigError, GenerationRequest, parse_event

log = logging.getLogger("allyoucantoken.backend.mlc")

DEFAULT_FACTORY = "mlc_llm:AsyncMLCEngine"
_SAMPLING = ("temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
             "logit_bias", "response_format", "user")


def load_factory(spec: str):
    """Import ``module:callable``; a missing mlc_llm is a ConfigError that says what to do
    (the ``serve`` command prints it as one line and exits)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if module_name.split(".")[0] == "mlc_llm":
            raise ConfigError("the mlc backend needs MLC-LLM: install the mlc_llm wheel "
                               "for your GPU (https://llm.mlc.ai/docs/install/mlc_llm.html), "
                               "or run `mlc_llm serve` behind the openai_compatible "
                               "backend") from exc
        raise
    return getattr(module, attr or "AsyncMLCEngine")


def _engine_config(value, spec: str):
    """A plain table becomes ``mlc_llm.serve.EngineConfig`` for the real engine."""
    if value is None or spec != DEFAULT_FACTORY or not isinstance(value, dict):
        return value
    from mlc_llm.serve import EngineConfig  # noqa: PLC0415 - optional dependency

    return EngineConfig(**value)


def _as_mapping(obj: Any) -> Any:
    """An MLC response object (pydantic, or any object with attributes) as plain dicts
    and lists, without its unset (None) fields, for the shared chunk parser."""
    if isinstance(obj, dict):
        return {k: _as_mapping(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_as_mapping(v) for v in obj]
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return _as_mapping(dump())
    if hasattr(obj, "__dict__"):
        return _as_mapping(vars(obj))
    return obj


class MLCEngine:
    """Runs one MLC-compiled model on the worker's event loop."""

    def __init__(self, model_cfg, config) -> None:
        opts = model_cfg.options
        self.name = model_cfg.name
        self.model = opts.get("model")
        if not self.model:
            raise ConfigError(f"models.{self.name}: the mlc backend needs options.model "
                             "(a compiled model directory or HF://mlc-ai/... id)")
        self.model_lib = opts.get("model_lib")
        self.device = opts.get("device", "auto")
        self.mode = opts.get("mode", "server")
        self.engine_config = opts.get("engine_config")
        self.factory_spec = opts.get("engine_factory", DEFAULT_FACTORY)
        self.engine = None

    async def start(self) -> None:
        """Build the engine (loads the weights onto the GPU; blocks until ready)."""
        factory = load_factory(self.factory_spec)
        self.engine = factory(self.model, self.device, model_lib=self.model_lib,
                              mode=self.mode,
                              engine_config=_engine_config(self.engine_config,
                                                           self.factory_spec))

    async def close(self) -> None:
        """Terminate the engine (stops its background threads, frees the GPU)."""
        engine, self.engine = self.engine, None
        if engine is not None:
            result = engine.terminate()
            if inspect.isawaitable(result):
                await result

    async def health(self) -> dict:
        """Up once the engine is built; ``capacity`` is its ``max_num_sequence``."""
        config = self.engine_config if isinstance(self.engine_config, dict) else {}
        return {"ok": self.engine is not None,
                "capacity": int(config.get("max_num_sequence") or 1)}

    def chat(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream(req, "chat")

    def completions(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        return self._stream(req, "completion")

    async def _create(self, req: GenerationRequest, kind: str, request_id: str):
        params = {k: req.body[k] for k in _SAMPLING if req.body.get(k) is not None}
        if req.max_tokens is not None:
            params["max_tokens"] = req.max_tokens
        common = dict(stream=True, stream_options={"include_usage": True},
                      request_id=request_id, **params)
        if kind == "chat":
            return await self.engine.chat.completions.create(messages=req.messages, **common)
        return await self.engine.completions.create(prompt=req.body.get("prompt", ""), **common)

    async def _stream(self, req: GenerationRequest, kind: str):
        if self.engine is None:
            raise APIError(503, f"The model `{self.name}` is not loaded.",
                           code="backend_unavailable")
        engine = self.engine
        request_id = req.request_id or uuid.uuid4().hex
        try:
            stream = await self._create(req, kind, request_id)
        except Exception as exc:  # noqa: BLE001 - MLC's BadRequestError and friends
            raise _as_api_error(exc) from None
        finished = completed = False
        try:
            async for response in stream:
                for chunk in parse_event(_as_mapping(response), kind):
                    if chunk.finish_reason == "abort":  # the engine aborted: not a finish
                        chunk.finish_reason = None
                    if chunk.finish_reason:
                        finished = True
                    yield chunk
            completed = True
        except Exception as exc:  # noqa: BLE001
            raise _as_api_error(exc) from None
        finally:
            if not completed:   # closed early (client gone) or failed: stop the engine's work
                try:
                    await engine.abort(request_id)
                except Exception:  # noqa: BLE001
                    log.warning("mlc abort of a request failed")
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if not finished:
            raise APIError(502, "The model engine aborted the generation.",
                           code="backend_error")


def _as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if type(exc).__name__ == "BadRequestError":
        return APIError(400, str(exc)[:500] or "The model rejected the request.",
                        code="invalid_request")
    log.error("mlc engine failed: %s", type(exc).__name__)
    return APIError(502, "The model engine failed while generating.", code="backend_error")
