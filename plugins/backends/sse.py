"""Split an upstream's SSE lines into gateway Chunks, for pass-through (the events
themselves are parsed by ``gateway.chunks.parse_event``, shared by every backend).

Each upstream event is decoded once, for what the gateway reads (finish_reason, usage,
the amount of output) and for the WebSocket and non-streaming paths (``delta``,
``logprobs``). An event with at most one choice also keeps its original bytes
(``Chunk.raw``): the SSE path relays those with only ``id``/``model`` rewritten.
"""
from __future__ import annotations

import json

from gateway.chunks import parse_event
from gateway.types import Chunk

# The C scanner alone: ``json.loads`` on bytes first guesses the encoding and matches
# whitespace with regular expressions, which doubles the cost of a small event.
_scan = json.JSONDecoder().scan_once


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
