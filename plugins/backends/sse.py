"""Parse OpenAI-style upstream stream chunks into gateway Chunks, for pass-through.

Each upstream event is decoded once, for what the gateway reads (finish_reason, usage,
the amount of output) and for the WebSocket and non-streaming paths (``delta``,
``logprobs``). An event with at most one choice also keeps its original bytes
(``Chunk.raw``): the SSE path relays those with only ``id``/``model`` rewritten.
"""
from __future__ import annotations

import json

from gateway.types import Chunk, Usage

# The C scanner alone: ``json.loads`` on bytes first guesses the encoding and matches
# whitespace with regular expressions, which doubles the cost of a small event.
_scan = json.JSONDecoder().scan_once

# Top-level fields of a chunk that the gateway owns or reads itself.
_ENVELOPE = frozenset(("id", "object", "created", "model", "choices", "usage"))


def _usage(raw) -> Usage | None:
    if not raw:
        return None
    return Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))


def _choice_chunk(choice: dict, kind: str, extra: dict | None) -> Chunk:
    if kind == "chat":
        delta = choice.get("delta")
        if delta is None:
            delta = {}
        text = delta.get("content") or ""
    else:
        delta, text = None, choice.get("text") or ""
    return Chunk(text, choice.get("finish_reason"), None, choice.get("index") or 0, delta,
                 choice.get("logprobs"), extra)


def parse_event(payload: dict, kind: str, raw: bytes | None = None) -> list[Chunk]:
    """One upstream chunk (chat.completion.chunk or text_completion) -> Chunks, one per
    choice (a usage-only event gives one Chunk with usage and no choice)."""
    choices = payload.get("choices") or []
    extra = None
    if len(payload) > 5:   # more than id, object, created, model, choices
        extra = {k: v for k, v in payload.items() if k not in _ENVELOPE} or None
    usage = payload.get("usage")
    if usage:
        usage = _usage(usage)
    if not choices:
        return [Chunk(usage=usage or None, extra=extra, raw=raw)]
    if len(choices) == 1:    # the usual event: one choice, relayed as its bytes
        c = choices[0]
        if kind == "chat":
            delta = c.get("delta")
            if delta is None:
                delta = {}
            text = delta.get("content") or ""
        else:
            delta, text = None, c.get("text") or ""
        return [Chunk(text, c.get("finish_reason"), usage or None, c.get("index") or 0,
                      delta, c.get("logprobs"), extra, raw)]
    chunks = [_choice_chunk(c, kind, extra) for c in choices]
    chunks[0].usage = usage
    if len(chunks) == 1:
        chunks[0].raw = raw
    return chunks


def parse_line(line: bytes, kind: str) -> list[Chunk] | None | bool:
    """An SSE line -> Chunks; None for lines to skip; False at ``data: [DONE]``."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return False
    try:
        text = data.decode()
        payload, end = _scan(text, 0)
        if end != len(text):
            payload = json.loads(text)   # trailing bytes: let the full parser decide
    except (ValueError, StopIteration):
        return None
    if not isinstance(payload, dict):
        return None
    if "error" in payload and not payload.get("choices"):
        raise UpstreamError(payload["error"])
    return parse_event(payload, kind, data)


class UpstreamError(Exception):
    """The upstream sent an error event inside its stream."""
