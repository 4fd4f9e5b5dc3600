"""STAND-IN for ``mlc_llm.AsyncMLCEngine`` (MLC-LLM cannot be installed from PyPI here).

This is NOT MLC: it is a small class with the same documented shape, so the ``mlc``
backend can be tested end to end inside a real gateway process:

  AsyncMLCEngine(model, device="auto", *, model_lib=None, mode="local",
                 engine_config=None, enable_tracing=False)
  await engine.chat.completions.create(messages=..., stream=True,
        stream_options={"include_usage": True}, request_id=..., max_tokens=..., ...)
      -> async generator of ChatCompletionStreamResponse-like objects
         (.choices[i].delta.content, .choices[i].finish_reason, .usage)
  await engine.completions.create(prompt=..., stream=True, ...)   (.choices[i].text)
  await engine.abort(request_id)
  engine.terminate()

Like MLC, an aborted request ends its stream with a usage chunk that reports ZERO
tokens. The "model" echoes the words of the last user message. Test knobs come from
``<model dir>/mlc-chat-config.json`` -> ``{"standin": {"delay": s, "abort_after": n}}``
(``abort_after``: the engine aborts the request itself after n tokens, as MLC does on
preemption or shutdown). Every create/abort/terminate call is appended as a JSON line
to ``<model dir>/standin-calls.jsonl`` so tests can see what the backend did.
"""
from __future__ import annotations

import asyncio
import json
import os
import weakref
from types import SimpleNamespace as NS
from typing import Any


class BadRequestError(ValueError):
    """Same name as MLC's error for invalid requests."""


class _ChatCompletions:
    def __init__(self, engine) -> None:
        self.engine = engine

    async def create(self, *, messages: list[dict[str, Any]], model: str | None = None,
                     frequency_penalty: float | None = None,
                     presence_penalty: float | None = None, logprobs: bool = False,
                     top_logprobs: int = 0, logit_bias: dict | None = None,
                     max_tokens: int | None = None, n: int = 1, seed: int | None = None,
                     stop=None, stream: bool = False, stream_options: dict | None = None,
                     temperature: float | None = None, top_p: float | None = None,
                     tools=None, tool_choice=None, user: str | None = None,
                     response_format=None, request_id: str | None = None,
                     extra_body: dict | None = None):
        last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        return await self.engine()._start("chat", str(last.get("content") or ""), max_tokens,
                                          stream, stream_options, request_id)


class _Completions:
    def __init__(self, engine) -> None:
        self.engine = engine

    async def create(self, *, prompt, model: str | None = None, best_of: int = 1,
                     echo: bool = False, frequency_penalty: float | None = None,
                     presence_penalty: float | None = None, logprobs=None, logit_bias=None,
                     max_tokens: int | None = None, n: int = 1, seed: int | None = None,
                     stop=None, stream: bool = False, stream_options: dict | None = None,
                     suffix=None, temperature: float | None = None, top_p: float | None = None,
                     user: str | None = None, response_format=None,
                     request_id: str | None = None, extra_body: dict | None = None):
        return await self.engine()._start("completion", str(prompt), max_tokens, stream,
                                          stream_options, request_id)


class AsyncMLCEngine:
    """Stand-in with the shape of mlc_llm.AsyncMLCEngine (see the module docstring)."""

    def __init__(self, model: str, device="auto", *, model_lib: str | None = None,
                 mode: str = "local", engine_config=None, enable_tracing: bool = False) -> None:
        self.model_dir = model
        with open(os.path.join(model, "mlc-chat-config.json")) as fh:
            knobs = json.load(fh).get("standin", {})
        self.delay = float(knobs.get("delay", 0.0))
        self.abort_after = int(knobs.get("abort_after", 0))
        self.aborted: set[str] = set()
        self.terminated = False
        self.chat = NS(completions=_ChatCompletions(weakref.ref(self)))
        self.completions = _Completions(weakref.ref(self))
        self._log("init", device=str(device), mode=mode)

    def _log(self, call: str, **fields) -> None:
        with open(os.path.join(self.model_dir, "standin-calls.jsonl"), "a") as fh:
            fh.write(json.dumps({"call": call, **fields}) + "\n")

    async def abort(self, request_id: str) -> None:
        self._log("abort", request_id=request_id)
        self.aborted.add(request_id)

    def terminate(self) -> None:
        self._log("terminate")
        self.terminated = True

    async def _start(self, kind, text, max_tokens, stream, stream_options, request_id):
        if self.terminated:
            raise RuntimeError("engine terminated")
        if not stream:
            raise BadRequestError("the stand-in only streams")
        self._log("create", kind=kind, request_id=request_id, stream=stream,
                  stream_options=stream_options, max_tokens=max_tokens)
        include_usage = bool((stream_options or {}).get("include_usage"))
        return self._generate(kind, text.split(), max_tokens, include_usage, request_id)

    async def _generate(self, kind, words, max_tokens, include_usage, request_id):
        limit = min(len(words), max_tokens or len(words))
        prompt_tokens = len(words) + 4
        produced = 0
        for i, word in enumerate(words[:limit]):
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.abort_after and produced >= self.abort_after:
                await self.abort(request_id)
            if request_id in self.aborted:
                break
            produced += 1
            finish = ("length" if limit < len(words) else "stop") if i == limit - 1 else None
            yield self._response(kind, word + " ", finish)
        if request_id in self.aborted:
            # MLC's behaviour: an aborted request reports zero usage.
            prompt_tokens = produced = 0
        if include_usage:
            yield NS(id=request_id, choices=[], usage=NS(
                prompt_tokens=prompt_tokens, completion_tokens=produced,
                total_tokens=prompt_tokens + produced, extra=None))

    @staticmethod
    def _response(kind, text, finish):
        if kind == "chat":
            choice = NS(index=0, delta=NS(role="assistant", content=text),
                        finish_reason=finish, logprobs=None)
        else:
            choice = NS(index=0, text=text, finish_reason=finish, logprobs=None)
        return NS(id="x", choices=[choice], usage=None)
