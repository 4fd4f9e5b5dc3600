"""Answers whose timing must not tell a secret fact (does this email belong to an
account?).

A page answers first and then does the work that depends on the fact (database writes,
code generation, mail) in a background task: the response time is the same either
way. The ``DeferredWork`` service keeps those tasks, logs their failures (type only:
they handle form contents) and lets them finish when the gateway stops. Where a step
must happen before the answer (registration creates the account at once), ``TimeFloor``
pads it to the same duration whichever way it went.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any

log = logging.getLogger("allyoucantoken.dashboard")


class DeferredWork:
    """Background service running the work pages defer until after their response."""

    name = "dashboard-deferred"

    def __init__(self, drain_timeout: float = 10.0) -> None:
        self.drain_timeout = drain_timeout
        self.tasks: set[asyncio.Task] = set()

    async def start(self, gateway) -> None:
        pass

    async def stop(self) -> None:
        """Let deferred work finish (it only queues mail and writes a few documents)."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.drain_timeout)
        for task in list(self.tasks):
            task.cancel()

    def spawn(self, what: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.ensure_future(self._guard(what, work))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    @staticmethod
    async def _guard(what: str, work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - nobody awaits this task: log it
            log.error("deferred %s failed: %s", what, type(exc).__name__)


_FALLBACK = DeferredWork()


def defer(gateway, what: str, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """Run ``work`` in the background, held by the gateway's ``DeferredWork`` service."""
    for service in getattr(gateway, "services", ()):
        if isinstance(service, DeferredWork):
            return service.spawn(what, work)
    return _FALLBACK.spawn(what, work)


class TimeFloor:
    """Pads a step (by sleeping) to a floor chosen before its outcome is known: twice
    the median of its recent durations, at least ``minimum`` seconds. Both outcomes of
    the step then take the floor, unless the machine is slow enough to exceed it."""

    def __init__(self, minimum: float = 0.02, window: int = 64) -> None:
        self.minimum = minimum
        self.recent: deque[float] = deque(maxlen=window)

    @property
    def floor(self) -> float:
        return max(self.minimum, 2 * statistics.median(self.recent)) if self.recent \
            else self.minimum

    @contextlib.asynccontextmanager
    async def pad(self) -> AsyncIterator[None]:
        floor, start = self.floor, time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - start
            self.recent.append(took)
            if took < floor:
                await asyncio.sleep(floor - took)
