"""One parser for OpenAI-style chunks and choices, shared by every backend.

Backends that receive OpenAI-shaped events (an HTTP upstream's SSE lines, llama-cpp-python's
stream, MLC's engine responses) turn each into gateway ``Chunk`` objects with
``parse_event``; ``choice_text`` and ``usage_of`` are the pieces it is made of, for
backends that shape their own chunks. Nothing here knows a transport.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.types import Chunk, Usage

# Top-level fields of a chunk that the gateway owns or reads itself.
ENVELOPE = frozenset(("id", "object", "created", "model", "choices", "usage"))


def usage_of(raw: Mapping | None) -> Usage | None:
    """An OpenAI ``usage`` object as gateway Usage (None when absent or empty)."""
    if not raw:
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def choice_text(choice: Mapping, kind: str) -> tuple[str, dict | None]:
    """The generated text of one choice and, for chat, its delta (``{}`` if absent):
    ``delta.content`` for ``kind == "chat"``, ``text`` for a text completion."""
    if kind == "chat":
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        return delta.get("content") or "", delta
    return choice.get("text") or "", None


def parse_event(payload: Mapping[str, Any], kind: str, raw: bytes | None = None) -> list[Chunk]:
    """One chunk event (chat.completion.chunk or text_completion) -> Chunks, one per
    choice, every field kept (a usage-only event gives one Chunk with usage and no
    choice). ``raw``, the event's own bytes, is kept on a one-choice Chunk so the SSE
    path can relay them with only ``id``/``model`` rewritten."""
    choices = payload.get("choices") or []
    extra = None
    if len(payload) > 5:   # more than id, object, created, model, choices
        extra = {k: v for k, v in payload.items() if k not in ENVELOPE} or None
    usage = usage_of(payload.get("usage"))
    if not choices:
        return [Chunk(usage=usage, extra=extra, raw=raw)]
    if len(choices) == 1:    # the usual event (kept inline: this runs once per chunk)
        c = choices[0]
        text, delta = choice_text(c, kind)
        finish = c.get("finish_reason")
        return [Chunk(text, finish, usage, c.get("index") or 0, delta, c.get("logprobs"),
                      extra, raw, None if finish is None else matched_stop(c))]
    chunks = []
    for c in choices:
        text, delta = choice_text(c, kind)
        finish = c.get("finish_reason")
        chunks.append(Chunk(text, finish, None, c.get("index") or 0, delta,
                            c.get("logprobs"), extra, None,
                            None if finish is None else matched_stop(c)))
    chunks[0].usage = usage
    return chunks


def matched_stop(choice: Mapping[str, Any]) -> str | None:
    """The stop sequence a finished choice names: vLLM's ``stop_reason`` (a string; an
    integer there is a stop token id, not a sequence) or SGLang's ``matched_stop``."""
    for key in ("stop_reason", "matched_stop"):
        value = choice.get(key)
        if isinstance(value, str):
            return value
    return None
