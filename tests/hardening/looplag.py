"""A test plugin that measures the gateway's event-loop lag from inside the process: a
ticker sleeps 5 ms at a time and records how late it wakes up. ``GET /_test/looplag``
returns the worst lag since the last call (and resets it)."""
from __future__ import annotations

import asyncio
import json
import time

import tornado.web

from gateway.hookspecs import hookimpl

TICK = 0.005


class LoopLag:
    name = "looplag"

    def __init__(self) -> None:
        self.worst = 0.0
        self.ticks = 0
        self.task: asyncio.Task | None = None

    async def start(self, gateway) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            self.worst = max(self.worst, time.perf_counter() - before - TICK)
            self.ticks += 1


LAG = LoopLag()


class LoopLagHandler(tornado.web.RequestHandler):
    def initialize(self, gateway) -> None:
        pass

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"worst_ms": 1000 * LAG.worst, "ticks": LAG.ticks}))
        LAG.worst, LAG.ticks = 0.0, 0


@hookimpl
def register_services(register, config, store):
    register(LAG)


@hookimpl
def register_routes(register, config):
    register(r"/_test/looplag", LoopLagHandler, {})
