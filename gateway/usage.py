"""Usage events (metadata only) and the batched writer that stores them.

An event is a dict of the fields in ``gateway.store.usage.EVENT_FIELDS``: who, which
model, token counts, timing, status. Never prompt or completion text. Events go to a
bounded in-memory buffer and are written to MongoDB in batches by a background task;
the buffer is flushed on shutdown.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any, Callable

from gateway.background import stop_task
from gateway import metrics

log = logging.getLogger("allyoucantoken.usage")


class UsageRecorder:
    """Buffers usage events and writes them in batches (and bumps key last-used times)."""

    def __init__(self, store, batch_size: int = 200, flush_interval: float = 1.0,
                 buffer_max: int = 50_000, observers: Callable[[dict], Any] | None = None) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.buffer: deque[dict[str, Any]] = deque(maxlen=buffer_max)
        self.observers = observers
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def record(self, event: dict[str, Any]) -> None:
        """Queue one event (non-blocking; the oldest event is dropped if the buffer is full)."""
        event.setdefault("ts", datetime.now(UTC))
        if len(self.buffer) == self.buffer.maxlen:
            metrics.USAGE_DROPPED.inc()
        self.buffer.append(event)
        if self.observers:
            try:
                self.observers(event=dict(event))
            except Exception:  # noqa: BLE001 - an observer plugin must not break requests
                log.exception("on_usage hook failed")
        if len(self.buffer) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - keep the events, try again next round
                log.exception("usage flush failed; will retry")
                await asyncio.sleep(self.flush_interval)

    async def flush(self) -> None:
        """Write everything buffered so far, in batches."""
        async with self._lock:
            while self.buffer:
                batch = [self.buffer.popleft() for _ in range(min(self.batch_size, len(self.buffer)))]
                try:
                    await self.store.usage.write_batch(batch)
                except Exception:
                    self.buffer.extendleft(reversed(batch))
                    raise
                last_used: dict[str, datetime] = {}
                for e in batch:
                    if e.get("key_id"):
                        last_used[e["key_id"]] = max(e["ts"], last_used.get(e["key_id"], e["ts"]))
                await self.store.keys.touch(last_used)

    async def stop(self) -> None:
        await stop_task(self._task)
        await self.flush()
