"""A test plugin that measures the gateway's event-loop lag from inside the process: a
ticker sleeps 5 ms at a time and records how late it wakes up. A watchdog thread
samples what the loop thread is doing whenever a tick is more than 50 ms overdue, so a
failing test can say where the loop was stuck. ``GET /_test/looplag`` returns the worst
lag since the last call, with the process CPU time spent meanwhile (low when the
process was merely not scheduled) and the sampled stack (and resets them)."""
from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import traceback

import tornado.web

from gateway.hookspecs import hookimpl

TICK = 0.005
WATCH = 0.05


class LoopLag:
    name = "looplag"

    def __init__(self) -> None:
        self.reset()
        self.task: asyncio.Task | None = None
        self.last_tick = time.perf_counter()
        self.loop_thread = threading.get_ident()
        self.stopped = threading.Event()

    def reset(self) -> None:
        self.worst, self.worst_cpu, self.ticks, self.stack = 0.0, 0.0, 0, ""

    async def start(self, gateway) -> None:
        self.loop_thread = threading.get_ident()
        self.task = asyncio.ensure_future(self._run())
        threading.Thread(target=self._watch, name="looplag-watch", daemon=True).start()

    async def stop(self) -> None:
        self.stopped.set()
        if self.task:
            self.task.cancel()

    async def _run(self) -> None:
        while True:
            before, cpu = time.perf_counter(), time.process_time()
            await asyncio.sleep(TICK)
            self.last_tick = now = time.perf_counter()
            late = now - before - TICK
            if late > self.worst:
                self.worst, self.worst_cpu = late, time.process_time() - cpu
            self.ticks += 1

    def _watch(self) -> None:
        """Sample the loop thread's stack once per stall longer than WATCH."""
        sampled_for = None
        while not self.stopped.wait(0.01):
            last = self.last_tick
            if time.perf_counter() - last > WATCH and sampled_for != last:
                sampled_for = last
                frame = sys._current_frames().get(self.loop_thread)
                if frame is not None and not self.stack:
                    self.stack = "".join(traceback.format_stack(frame)[-12:])


LAG = LoopLag()


class LoopLagHandler(tornado.web.RequestHandler):
    def initialize(self, gateway) -> None:
        pass

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"worst_ms": 1000 * LAG.worst, "cpu_ms": 1000 * LAG.worst_cpu,
                                "ticks": LAG.ticks, "stack": LAG.stack}))
        LAG.reset()


@hookimpl
def register_services(register, config, store):
    register(LAG)


@hookimpl
def register_routes(register, config):
    register(r"/_test/looplag", LoopLagHandler, {})
