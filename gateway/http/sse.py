"""Server-Sent Events output: OpenAI stream chunks encoded cheaply, flushed in batches.

The relay writes one event per token, so both parts are on the hot path:
``ChunkEncoder`` relays an upstream's event bytes with only ``id``/``model`` replaced,
and for backends that yield plain Chunks pre-encodes the constant part of every event
(id, object, created, model) once per request and JSON-encodes only the rest;
``Flusher`` sends whatever was written during one pass of the event loop in a single
flush (one socket write when an upstream delivers several tokens at once), and makes
the writer wait while the client has not taken the previous flush (backpressure).
"""
from __future__ import annotations

import asyncio
import json

from gateway.http.tornado_compat import response_finished
from gateway.types import Chunk, Usage


_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(data) -> str:
    """``json.dumps(data, separators=(",", ":"), ensure_ascii=False)`` with one encoder
    made once (``json.dumps`` builds a new one per call when given options)."""
    return _COMPACT.encode(data)


class ChunkEncoder:
    """Encodes Chunks of one request as ``data: {...}`` events, as OpenAI sends them.

    A Chunk with ``raw`` (an upstream event) is relayed as those bytes with the upstream's
    ``id`` and ``model`` replaced by the gateway's: the patterns are learnt from the first
    event and replaced with C-speed byte operations; an event where a pattern is not found
    exactly once is decoded and re-encoded instead (always faithful). When the first
    event starts with its ``id`` and ``model`` (OpenAI's order; ``created`` constant within
    a stream), that whole start is learnt instead: a later event that begins with the
    same bytes gets the rewritten start and keeps its rest, with no search at all (one
    that does not is learnt from anew).
    """

    __slots__ = ("chat", "object", "request_id", "model", "created", "include_usage",
                 "_head", "_started", "_subs", "_prefix")

    def __init__(self, kind: str, request_id: str, model: str, created: int,
                 include_usage: bool) -> None:
        self.chat = kind == "chat"
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self.request_id, self.model = request_id, model
        self.created, self.include_usage = created, include_usage
        # Built at the first event that needs them (a relayed stream never does).
        self._head: tuple[str, str] | None = None       # event start and end, plain Chunks
        self._started: set[int] | None = None           # choices that had their first chunk
        self._subs: list[tuple[bytes, bytes]] | None = None
        self._prefix: tuple[bytes, bytes] | None = None   # (upstream's start, ours)

    @property
    def _base(self) -> dict:
        return {"id": self.request_id, "object": self.object, "created": self.created,
                "model": self.model}

    def encode(self, chunk: Chunk) -> str | bytes:
        if chunk.raw is not None:
            return self.encode_raw(chunk.raw)
        if self._head is None:
            self._head = ("data: " + _dumps(self._base)[:-1] + ',"choices":[{"index":',
                          ',"usage":null}\n\n' if self.include_usage else "}\n\n")
            self._started = set()
        head, tail = self._head
        index = chunk.index
        first = index not in self._started
        if first:
            self._started.add(index)
        if chunk.delta is not None and self.chat:
            body = '"delta":' + _dumps(chunk.delta)
        else:
            text = _dumps(chunk.text)
            if not self.chat:
                body = '"text":' + text
            elif first:
                body = '"delta":{"role":"assistant","content":' + text + "}"
            elif chunk.text:
                body = '"delta":{"content":' + text + "}"
            else:
                body = '"delta":{}'
        finish = "null" if chunk.finish_reason is None else _dumps(chunk.finish_reason)
        if chunk.stop is not None:            # which stop sequence, as vLLM says it
            finish += ',"stop_reason":' + _dumps(chunk.stop)
        logprobs = "null" if chunk.logprobs is None else _dumps(chunk.logprobs)
        if chunk.extra:
            tail = "," + _dumps(chunk.extra)[1:-1] + tail
        return (f'{head}{index},{body},"logprobs":{logprobs},'
                f'"finish_reason":{finish}}}]{tail}')

    def encode_raw(self, raw: bytes) -> bytes:
        """An upstream event, relayed with the gateway's id and model."""
        prefix = self._prefix
        if prefix is not None and raw.startswith(prefix[0]):
            return prefix[1] + raw[len(prefix[0]):] + b"\n\n"
        subs = self._subs
        if subs is None:
            subs = self._learn(raw)          # learns this event's start too, if it can
            prefix = self._prefix
            if prefix is None:
                self._subs = subs            # no start to learn: the patterns are kept
            elif raw.startswith(prefix[0]):
                return prefix[1] + raw[len(prefix[0]):] + b"\n\n"
        out = raw
        for old, new in subs:
            if out.count(old) != 1:
                return self._reencode(raw)
            out = out.replace(old, new)
        return b"data: " + out + b"\n\n"

    def _learn(self, raw: bytes) -> list[tuple[bytes, bytes]]:
        try:
            payload = json.loads(raw)
        except ValueError:
            return [(b"\x00", b"")]          # never found: every event is re-encoded
        subs = []
        for key, ours in (("id", self.request_id), ("model", self.model)):
            theirs = payload.get(key)
            if theirs == ours:
                continue
            value = json.dumps(theirs).encode()
            spaced = b'"' + key.encode() + b'": ' + value
            old = spaced if spaced in raw else b'"' + key.encode() + b'":' + value
            new = b'"' + key.encode() + b'":' + _dumps(ours).encode()
            subs.append((old, new) if theirs is not None else (b"\x00", b""))
        self._prefix = self._learn_prefix(raw, subs)
        return subs

    @staticmethod
    def _learn_prefix(raw: bytes, subs: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes] | None:
        """The event's start up to the end of its last rewritten field, and that start
        rewritten (``data: `` included), when every field to rewrite is a string found
        exactly once and the start holds nothing but the envelope."""
        end = 0
        for old, _ in subs:
            if not old.endswith(b'"') or raw.count(old) != 1:
                return None
            end = max(end, raw.index(old) + len(old))
        start = ours = raw[:end]
        if not subs or b"[" in start or b"{" in start[1:]:
            return None          # only top-level scalars (id, object, created, model)
        for old, new in subs:
            ours = ours.replace(old, new)
        return start, b"data: " + ours

    def _reencode(self, raw: bytes) -> bytes:
        try:
            payload = json.loads(raw)
        except ValueError:
            return b""
        payload["id"], payload["model"] = self.request_id, self.model
        return ("data: " + _dumps(payload) + "\n\n").encode()

    def usage(self, usage: Usage, raw: bytes | None = None) -> str | bytes:
        """The final usage event (empty choices), sent only when the client asked: the
        upstream's own (``raw``, with its details) or one built from ``usage``."""
        if raw is not None:
            return self.encode_raw(raw)
        return f"data: {_dumps({**self._base, 'choices': [], 'usage': usage.as_openai()})}\n\n"

    @staticmethod
    def error(body: dict) -> str:
        return f"data: {_dumps(body)}\n\n"


def _consume(future: asyncio.Future) -> None:
    """Mark a flush's outcome as seen (a client that left is noticed at the next write)."""
    future.cancelled() or future.exception()


class Flusher:
    """Flushes a Tornado handler at most once per event-loop pass; the first event (with
    the response headers) goes out at once, without waiting for the next pass, as the
    time to first token counts from it."""

    __slots__ = ("handler", "_scheduled", "_last")

    def __init__(self, handler) -> None:
        self.handler = handler
        self._scheduled = False
        self._last: asyncio.Future | None = None

    def written_nowait(self) -> asyncio.Future | None:
        """Call after each write: schedules the next flush and returns None, or returns
        the previous flush, still pending, for the writer to await (it raises
        StreamClosedError when the client is gone) before calling this again. Not a
        coroutine: an event written while the client keeps up costs no await."""
        last = self._last
        if last is None:
            if not self._scheduled:
                self._flush()
            return None
        if not last.done():
            return last
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return None

    def _flush(self) -> None:
        self._scheduled = False
        if response_finished(self.handler):
            return
        future = self.handler.flush()
        future.add_done_callback(_consume)
        self._last = future
