"""Split an upstream's SSE lines into gateway Chunks, for pass-through (the events
themselves are parsed by ``sdk.parse_event``, shared by every backend).

Each upstream event is decoded once, for what the gateway reads (finish_reason, usage,
the amount of output) and for the WebSocket and non-streaming paths (``delta``,
``logprobs``). An event with at most one choice also keeps its original bytes
(``Chunk.raw``): the SSE path relays those with only ``id``/``model`` rewritten.
Events that differ from the stream's usual one (:class:`EventShape`) only in their
content string are not decoded at all: their Chunk is built from that string.
"""
from __future__ import annotations

import json
import re

from gateway.sdk import Chunk, parse_event

# The C scanner alone: ``json.loads`` on bytes first guesses the encoding and matches
# whitespace with regular expressions, which doubles the cost of a small event.
_scan = json.JSONDecoder().scan_once

# The inside of a JSON string that decodes to its own UTF-8 bytes: no quote, no
# backslash (escape), no control character (refused by the strict decoder).
_PLAIN_STRING = re.compile(rb'[^"\\\x00-\x1f]*')
_BEFORE_VALUE = re.compile(rb'"(?:content|text)"[ \t\r\n]*:[ \t\r\n]*"\Z')


class EventShape:
    """One stream's usual event: a single choice carrying only content (chat
    ``delta.content``, or a completion's ``text``), learnt from an event parsed in full
    as the bytes before and after its content string. A later event with exactly those
    bytes around a plain string (no quote, backslash or control character) is the same
    JSON with another content, so its Chunk is built without decoding it: the Chunk
    :func:`sdk.parse_event` would give (same index and extra fields, no
    finish_reason, usage or logprobs, the event's bytes as ``raw``). Anything else is
    parsed in full (and may be learnt from anew)."""

    __slots__ = ("chat", "head", "tail", "index", "extra")

    def __init__(self, kind: str) -> None:
        self.chat = kind == "chat"
        self.head: bytes | None = None
        self.tail = b""
        self.index = 0
        self.extra: dict | None = None

    def match(self, data: bytes) -> Chunk | None:
        """The Chunk of an event of the learnt shape, else None."""
        head, tail = self.head, self.tail
        if head is None or not data.startswith(head) or not data.endswith(tail):
            return None
        end = len(data) - len(tail)
        if end < len(head):
            return None
        middle = data[len(head):end]
        if _PLAIN_STRING.fullmatch(middle) is None:
            return None
        try:
            text = middle.decode()
        except UnicodeDecodeError:
            return None
        extra = self.extra
        return Chunk(text, None, None, self.index, {"content": text} if self.chat else None,
                     None, dict(extra) if extra else None, data)

    def learn(self, data: bytes, chunk: Chunk) -> None:
        """Learn the shape of ``data``, parsed in full as ``chunk``, if it has one."""
        text = chunk.text
        if not text or chunk.finish_reason is not None or chunk.usage is not None \
                or chunk.logprobs is not None or chunk.raw is not data:
            return
        if (chunk.delta != {"content": text}) if self.chat else (chunk.delta is not None):
            return
        extra = chunk.extra
        if extra and any(isinstance(v, (dict, list)) for v in extra.values()):
            return
        encoded = text.encode()
        if _PLAIN_STRING.fullmatch(encoded) is None:
            return
        needle = b'"' + encoded + b'"'
        if data.count(needle) != 1:      # the content value, and nothing else, matches
            return
        start = data.index(needle) + 1
        if _BEFORE_VALUE.search(data, 0, start) is None:
            return
        self.head, self.tail = data[:start], data[start + len(encoded):]
        self.index, self.extra = chunk.index, extra


def parse_line(line: bytes, kind: str, shape: EventShape | None = None
               ) -> list[Chunk] | None | bool:
    """An SSE line -> Chunks; None for lines to skip; False at ``data: [DONE]``.
    ``shape``: the stream's :class:`EventShape` (events of its shape are not decoded)."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if shape is not None:
        chunk = shape.match(data)
        if chunk is not None:
            return [chunk]
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
    chunks = parse_event(payload, kind, data)
    if shape is not None and len(chunks) == 1:
        shape.learn(data, chunks[0])
    return chunks


class UpstreamError(Exception):
    """The upstream sent an error event inside its stream."""
