"""Helpers for the gateway's background tasks."""
from __future__ import annotations

import asyncio
import time


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel a background task and wait until it has really stopped."""
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


class WarnOnce:
    """Log a recurring warning at most once per ``every`` seconds (with how many times
    it happened meanwhile), so a database outage does not flood the log."""

    def __init__(self, log, every: float = 30.0) -> None:
        self.log = log
        self.every = every
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def warning(self, msg: str, *args) -> None:
        now = time.monotonic()
        self._count[msg] = self._count.get(msg, 0) + 1
        if now - self._last.get(msg, -self.every) >= self.every:
            times = self._count.pop(msg)
            self._last[msg] = now
            self.log.warning(msg + (f" ({times} times)" if times > 1 else ""), *args)
