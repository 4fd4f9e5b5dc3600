"""Work a page does after its answer has been sent.

A page whose answer must not depend on a secret fact (does this email belong to an
account?) answers first and then does the work that depends on it (database writes,
code generation, mail) in a background task: the response time is the same either
way. The ``DeferredWork`` service keeps those tasks, logs their failures (type only:
they handle form contents) and lets them finish when the gateway stops.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
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
