"""Writing a streamed answer with backpressure, shared by every streaming API handler
(chat and text completions, Responses, Messages)."""
from __future__ import annotations

from tornado.iostream import StreamClosedError

from gateway.http.sse import Flusher
from gateway.relay.streaming import ClientGone


class StreamSink:
    """Writes a stream's events to a Tornado handler: each write waits only while the
    previous flush is pending (backpressure; no await otherwise), and a client gone is
    :class:`ClientGone`. ``sent`` counts events written, ``keepalives`` the comments
    (or pings) written while the request waited for the model's capacity: once either
    is non-zero the response has started, so a later refusal is an error event."""

    __slots__ = ("handler", "flusher", "sent", "keepalives")

    def __init__(self, handler) -> None:
        self.handler = handler
        self.flusher = Flusher(handler)
        self.sent = 0
        self.keepalives = 0

    @property
    def started(self) -> bool:
        return bool(self.sent or self.keepalives)

    async def write(self, text, events: int = 1) -> None:
        """Write ``events`` events (one string) and apply backpressure."""
        self.handler.write(text)
        self.sent += events
        flusher = self.flusher
        try:
            pending = flusher.written_nowait()
            while pending is not None:
                await pending
                pending = flusher.written_nowait()
        except StreamClosedError:
            raise ClientGone() from None

    async def keepalive(self, text: str) -> None:
        """Write a keep-alive (an SSE comment, a ping event) and flush it now."""
        self.keepalives += 1
        self.handler.write(text)
        try:
            await self.handler.flush()
        except StreamClosedError:
            raise ClientGone() from None
