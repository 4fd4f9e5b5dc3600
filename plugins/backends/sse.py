"""Parse OpenAI-style upstream stream chunks into gateway Chunks."""
from __future__ import annotations

import json

from gateway.types import Chunk, Usage


def parse_event(payload: dict, kind: str) -> Chunk:
    """One upstream chunk (chat.completion.chunk or text_completion) -> Chunk."""
    text, finish = "", None
    choices = payload.get("choices") or []
    if choices:
        choice = choices[0]
        if kind == "chat":
            text = (choice.get("delta") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        finish = choice.get("finish_reason")
    usage = None
    raw = payload.get("usage")
    if raw:
        usage = Usage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0))
    return Chunk(text, finish, usage)


def parse_line(line: bytes, kind: str) -> Chunk | None | bool:
    """An SSE line -> Chunk; None for lines to skip; False at ``data: [DONE]``."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return False
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if "error" in payload and not payload.get("choices"):
        raise UpstreamError(payload["error"])
    return parse_event(payload, kind)


class UpstreamError(Exception):
    """The upstream sent an error event inside its stream."""
