"""A stand-in GPU model server, shaped as vLLM, MLC and llama.cpp servers queue: it runs
at most ``slots`` sequences at once and queues the rest first come, first served; each
sequence streams ``tokens`` tokens, one every ``interval`` seconds (decoding on a busy GPU).

It is NOT a model: a real HTTP server (aiohttp) with an OpenAI-compatible streaming API,
for the fair-share benchmark (bench/fairness.py) and the queueing tests, where what
matters is the server's capacity and its FIFO, not the text. ``GET /stats`` tells the
sequences running now, the most ever running at once, and those waiting in its FIFO.

    python -m bench.gpu_standin --port 9200 --slots 8 --tokens 32 --interval 0.02
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web


class GPUStandIn:
    """The server: a FIFO of ``slots`` sequence slots and paced token streams."""

    def __init__(self, slots: int = 8, tokens: int = 32, interval: float = 0.02) -> None:
        self.slots, self.tokens, self.interval = slots, tokens, interval
        self.gate = asyncio.Semaphore(slots)        # FIFO beyond the slots
        self.stats = {"running": 0, "max_running": 0, "waiting": 0, "served": 0}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/stats", self.get_stats)
        return app

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "gpu", "object": "model"}]})

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens = min(self.tokens, int(body.get("max_tokens") or self.tokens))
        self.stats["waiting"] += 1
        try:
            await self.gate.acquire()
        finally:
            self.stats["waiting"] -= 1
        stats = self.stats
        stats["running"] += 1
        stats["max_running"] = max(stats["max_running"], stats["running"])
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            base = {"id": "s", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": "gpu"}
            for i in range(tokens):
                await asyncio.sleep(self.interval)
                delta = {"role": "assistant", "content": "tok "} if i == 0 else {"content": "tok "}
                event = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(event)}\n\n".encode())
            done = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                         "finish_reason": "length"}]}
            usage = {**base, "choices": [], "usage": {"prompt_tokens": 10,
                                                      "completion_tokens": tokens,
                                                      "total_tokens": 10 + tokens}}
            await resp.write(f"data: {json.dumps(done)}\n\ndata: {json.dumps(usage)}\n\n"
                             "data: [DONE]\n\n".encode())
            stats["served"] += 1
            return resp
        finally:
            stats["running"] -= 1
            self.gate.release()


async def run(port: int, **settings) -> None:
    runner = web.AppRunner(GPUStandIn(**settings).app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=2048).start()
    print(f"READY {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, default=9200)
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--interval", type=float, default=0.02)
    ns = p.parse_args()
    asyncio.run(run(ns.port, slots=ns.slots, tokens=ns.tokens, interval=ns.interval))


if __name__ == "__main__":
    main()
