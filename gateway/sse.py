"""Server-Sent Events output: OpenAI stream chunks encoded cheaply, flushed in batches.

The relay writes one event per token, so both parts are on the hot path:
``ChunkEncoder`` pre-encodes the constant part of every event (id, object, created,
model) once per request and only JSON-encodes the text of each chunk;
``Flusher`` sends whatever was written during one pass of the event loop in a single
flush (one socket write when an upstream delivers several tokens at once), and makes
the writer wait while the client has not taken the previous flush (backpressure).
"""
from __future__ import annotations

import asyncio
import json

from gateway.types import Chunk, Usage


def _dumps(data) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


class ChunkEncoder:
    """Encodes Chunks of one request as ``data: {...}`` events, as OpenAI sends them."""

    def __init__(self, kind: str, request_id: str, model: str, created: int,
                 include_usage: bool) -> None:
        self.chat = kind == "chat"
        self.object = "chat.completion.chunk" if self.chat else "text_completion"
        self._base = {"id": request_id, "object": self.object, "created": created,
                      "model": model}
        self._head = "data: " + _dumps(self._base)[:-1] + ',"choices":[{"index":0,'
        self._tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
        self._first = True

    def encode(self, chunk: Chunk) -> str:
        text = _dumps(chunk.text)
        if not self.chat:
            body = '"text":' + text
        elif self._first:
            body = '"delta":{"role":"assistant","content":' + text + "}"
        elif chunk.text:
            body = '"delta":{"content":' + text + "}"
        else:
            body = '"delta":{}'
        self._first = False
        finish = "null" if chunk.finish_reason is None else _dumps(chunk.finish_reason)
        return f'{self._head}{body},"logprobs":null,"finish_reason":{finish}}}]{self._tail}'

    def usage(self, usage: Usage) -> str:
        """The final usage event (empty choices), sent only when the client asked."""
        return f"data: {_dumps({**self._base, 'choices': [], 'usage': usage.as_openai()})}\n\n"

    @staticmethod
    def error(body: dict) -> str:
        return f"data: {_dumps(body)}\n\n"


class Flusher:
    """Flushes a Tornado handler at most once per event-loop pass."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self._scheduled = False
        self._last: asyncio.Future | None = None

    async def written(self) -> None:
        """Call after each write: waits while the previous flush is still pending
        (raises StreamClosedError when the client is gone), schedules the next one."""
        last = self._last
        if last is not None and not last.done():
            await last
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self.handler._finished:
            return
        future = self.handler.flush()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._last = future
